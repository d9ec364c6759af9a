//! The initiator engine against a real target: tgtd on 127.0.0.1.

mod support;

use std::sync::Arc;

use sanroot::iscsi::initiator::{self, InitiatorConfig};
use sanroot::iscsi::login::Portal;
use sanroot::lun::Lun;
use support::tgtd::{LunSpec, Tgtd};

const IQN: &str = "iqn.2026-11.org.sanroot.test:disk";
const INITIATOR: &str = "iqn.2026-11.org.sanroot.test:initiator";

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

#[test]
fn login_read_write_round_trip() {
    let t = Tgtd::start();
    t.target(1, IQN);
    let backing = t
        .lun(
            1,
            1,
            &LunSpec {
                size: 64 << 20,
                ..Default::default()
            },
        )
        .unwrap();
    let portal = Portal::new("127.0.0.1", t.port);
    let cfg = InitiatorConfig::new(INITIATOR);
    let c = initiator::connect(&portal, IQN, &cfg, None).expect("login");
    let lun = Lun::open(Arc::new(c.session), 1).expect("open LUN 1");
    assert_eq!(lun.info.block_size(), 512);
    assert_eq!(lun.info.blocks(), (64 << 20) / 512);
    let data = pattern(1 << 20, 7);
    let (r, _) = lun.write(2048, data.clone(), false);
    r.expect("write");
    lun.flush().expect("flush");
    let (r, back) = lun.read(2048, vec![0u8; 1 << 20]);
    r.expect("read");
    assert!(back == data, "read back what was written");
    let file = std::fs::read(&backing).unwrap();
    assert!(
        file[2048 * 512..2048 * 512 + (1 << 20)] == data[..],
        "backing file holds the bytes"
    );
}
