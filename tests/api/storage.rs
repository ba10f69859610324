//! The storage contract, checked against a backend through the trait alone (the local
//! directory here; every backend added runs the same checks).

use exportd::storage::{LocalDir, PrepareError, Prepared, Resume, RunFile, RunId, Storage};
use futures::TryStreamExt;
use uuid::Uuid;

/// The bytes of a stored file from `start`, `count` of them, read through the trait.
async fn read(storage: &dyn Storage, name: &str, start: u64, count: u64) -> Vec<u8> {
    let file = storage.open(name).await.unwrap();
    let chunks: Vec<_> = file.read(start, count).await.unwrap().try_collect().await.unwrap();
    chunks.concat()
}

async fn write(mut run: RunFile, bytes: &[u8]) -> String {
    run.out.append(bytes).await.unwrap();
    run.out.sync().await.unwrap();
    run.name
}

/// Runs the contract against one backend.
async fn conformance(storage: &dyn Storage) {
    let export_id = Uuid::new_v4();
    let run = |token| RunId { export_id, token, extension: "csv" };
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());

    // A run's own file: appended, synced, read back whole and by range.
    let first = write(storage.create_run(run(a)).await.unwrap(), b"header\nrow 1\nrow 2\n").await;
    assert_eq!(first, format!("{export_id}/{a}.csv"));
    assert_eq!(storage.open(&first).await.unwrap().size(), 19);
    assert_eq!(read(storage, &first, 0, 19).await, b"header\nrow 1\nrow 2\n");
    assert_eq!(read(storage, &first, 7, 5).await, b"row 1");

    // Taken over from a run that may be alive: the prefix is copied into a new file, the old
    // one left as it is.
    let Prepared::Copy(mut copy) =
        storage.prepare_run(run(b), Resume { file: Some(&first), bytes: 13, adopt: false }).await.unwrap()
    else {
        panic!("a takeover copies")
    };
    while !copy.step().await.unwrap() {}
    let second = write(copy.finish().await.unwrap(), b"row 2'\n").await;
    assert_ne!(second, first);
    assert_eq!(read(storage, &second, 0, 20).await, b"header\nrow 1\nrow 2'\n");
    assert_eq!(read(storage, &first, 0, 19).await, b"header\nrow 1\nrow 2\n", "the old file is untouched");

    // Taken over from a clean release: continued in place, cut back to the checkpoint.
    let Prepared::Ready(adopted) =
        storage.prepare_run(run(c), Resume { file: Some(&second), bytes: 13, adopt: true }).await.unwrap()
    else {
        panic!("a clean release is adopted")
    };
    assert_eq!(adopted.name, second);
    write(adopted, b"row 2\n").await;
    assert_eq!(read(storage, &second, 0, 19).await, b"header\nrow 1\nrow 2\n");

    // A checkpoint past the stored bytes, or of a missing file, is reported as lost.
    for (name, bytes) in [(second.as_str(), 1000), ("nowhere/x.csv", 1)] {
        let lost = storage.prepare_run(run(Uuid::new_v4()), Resume { file: Some(name), bytes, adopt: true }).await;
        assert!(matches!(lost, Err(PrepareError::CheckpointLost { .. })), "{name}: {lost:?}");
    }

    // An abandoned copy leaves nothing behind.
    let Prepared::Copy(copy) = storage
        .prepare_run(run(Uuid::new_v4()), Resume { file: Some(&second), bytes: 13, adopt: false })
        .await
        .unwrap()
    else {
        panic!("a takeover copies")
    };
    copy.abandon().await;
    let mut names: Vec<String> = storage.run_files(export_id).await.unwrap().into_iter().map(|(n, _)| n).collect();
    names.sort();
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort();
    assert_eq!(names, expected);
    assert!(storage.exports().await.unwrap().contains(&export_id));

    // An open file reads to its end even when deleted meanwhile.
    let open = storage.open(&first).await.unwrap();
    storage.remove_other_runs(export_id, &second).await;
    let chunks: Vec<_> = open.read(0, 19).await.unwrap().try_collect().await.unwrap();
    assert_eq!(chunks.concat(), b"header\nrow 1\nrow 2\n");
    assert_eq!(storage.run_files(export_id).await.unwrap().len(), 1, "only the kept file is left");
    storage.remove_file(&second).await;
    assert!(storage.open(&second).await.is_err());
    storage.remove_export(export_id).await;
    assert!(!storage.exports().await.unwrap().contains(&export_id));
}

#[tokio::test]
async fn the_local_directory_keeps_the_storage_contract() {
    let dir = tempfile::tempdir().unwrap();
    conformance(&LocalDir::new(dir.path()).unwrap()).await;
}
