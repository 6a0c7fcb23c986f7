//! The id index's tests: lookups in recent ids and in sealed runs, across a reload, and the
//! Bloom filters' error rates.

use super::*;

fn tree() -> sled::Tree {
    let db = sled::Config::new().temporary(true).open().unwrap();
    db.open_tree("log").unwrap()
}

fn sequential_id(n: u64) -> Uuid {
    Uuid::from_u64_pair(0x0190_0000_0000_7000, n)
}

#[test]
fn ids_are_found_in_recent_and_in_sealed_runs_and_after_a_reload() {
    let tree = tree();
    let (mut index, from) = IdIndex::load(&tree).unwrap();
    assert_eq!(from, 0);
    let total = RUN_EVENTS as u64 + 1_000;
    for position in 0..total {
        index.insert(sequential_id(position), position);
        if position + 1 == RUN_EVENTS as u64 {
            index.maintain().unwrap();
            // While it is sealed, its ids are found all the same.
            assert_eq!(index.lookup(&sequential_id(3)).unwrap(), Some(3));
        }
    }
    index.finish_sealing().unwrap();
    assert_eq!(index.run_count(), 1);
    for position in [
        0,
        1,
        4_095,
        RUN_EVENTS as u64 - 1,
        RUN_EVENTS as u64,
        total - 1,
    ] {
        assert_eq!(
            index.lookup(&sequential_id(position)).unwrap(),
            Some(position)
        );
    }
    assert_eq!(index.lookup(&sequential_id(total)).unwrap(), None);
    assert_eq!(index.lookup(&Uuid::new_v4()).unwrap(), None);

    let (reloaded, from) = IdIndex::load(&tree).unwrap();
    assert_eq!(from, RUN_EVENTS as u64, "recent ids come back from the log");
    assert_eq!(reloaded.lookup(&sequential_id(17)).unwrap(), Some(17));
    assert_eq!(
        reloaded.lookup(&sequential_id(RUN_EVENTS as u64)).unwrap(),
        None
    );
}

#[test]
fn the_filter_has_no_false_negatives_and_few_false_positives() {
    let mut filter = BlockedBloom::with_capacity(100_000);
    for n in 0..100_000 {
        filter.insert(hash_id(&sequential_id(n)));
    }
    assert!((0..100_000).all(|n| filter.may_contain(hash_id(&sequential_id(n)))));
    let false_positives = (0..100_000)
        .filter(|_| filter.may_contain(hash_id(&Uuid::new_v4())))
        .count();
    assert!(false_positives < 500, "{false_positives} in 100,000");
}

#[test]
fn pages_are_searched_exactly() {
    let mut page = Vec::new();
    for n in [3u64, 7, 9] {
        page.extend_from_slice(sequential_id(n).as_bytes());
        page.extend_from_slice(&(n * 10).to_be_bytes());
    }
    assert_eq!(search_page(&page, &sequential_id(7)).unwrap(), Some(70));
    assert_eq!(search_page(&page, &sequential_id(8)).unwrap(), None);
    assert!(search_page(&page[..30], &sequential_id(7)).is_err());
}
