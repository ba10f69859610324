//! The storage contract, checked against each backend through the trait alone: the local
//! directory and S3-compatible object storage (a real Garage node).

use exportd::storage::{Durable, LocalDir, PrepareError, Prepared, Resume, RunFile, RunId, Storage};
use futures::TryStreamExt;
use uuid::Uuid;

use crate::support::s3::Garage;

/// The bytes of a stored file from `start`, `count` of them, read through the trait.
async fn read(storage: &dyn Storage, name: &str, start: u64, count: u64) -> Vec<u8> {
    let file = storage.open(name).await.unwrap();
    let chunks: Vec<_> = file.read(start, count).await.unwrap().try_collect().await.unwrap();
    chunks.concat()
}

/// `len` bytes that differ from any other block's (`seed`).
fn block(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i % 251) as u8)).collect()
}

/// Appends `bytes` at a chunk boundary and returns what the backend says is durable.
async fn append(run: &mut RunFile, bytes: &[u8]) -> Option<Durable> {
    run.out.append(bytes).await.unwrap();
    run.out.sync().await.unwrap()
}

/// Runs the contract against one backend, with chunks of `part` bytes (an object store's part
/// size: a chunk boundary after a whole part is durable).
async fn conformance(storage: &dyn Storage, part: usize) {
    let export_id = Uuid::new_v4();
    let run = |token| RunId { export_id, token, extension: "csv", piece: None };
    let (a, b, c, d) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (one, two, tail) = (block(1, part), block(2, part), b"the last rows\n".to_vec());
    let whole = [one.clone(), two.clone(), tail.clone()].concat();

    // A run's own file: a chunk boundary after a whole part is durable (and says how to find the
    // bytes again); a short tail may wait; finished, the file reads back whole and by range.
    let mut first = storage.create_run(run(a)).await.unwrap();
    assert_eq!(first.name, format!("{export_id}/{a}.csv"));
    append(&mut first, &one).await.expect("a whole part is durable");
    let at_two = append(&mut first, &two).await.expect("a whole part is durable");
    let _ = append(&mut first, &tail).await; // durable on disk, waiting in an object store
    first.out.finish().await.unwrap();
    let first_name = first.name.clone();
    let len = whole.len() as u64;
    assert_eq!(storage.open(&first_name).await.unwrap().size(), len);
    assert_eq!(read(storage, &first_name, 0, len).await, whole);
    assert_eq!(read(storage, &first_name, part as u64 - 3, 6).await, whole[part - 3..part + 3]);
    assert_eq!(read(storage, &first_name, len - 5, 5).await, b"rows\n");

    // Taken over at the second part's checkpoint from a run that may be alive: the prefix is
    // copied into a new file of the new run's own; whatever the old run does next cannot
    // change it.
    let mut stale = storage.create_run(run(b)).await.unwrap();
    append(&mut stale, &one).await.unwrap();
    let cp = append(&mut stale, &two).await.unwrap();
    let resume = Resume { file: Some(&stale.name), bytes: 2 * part as u64, state: cp.state.as_ref(), adopt: false };
    let Prepared::Copy(mut copy) = storage.prepare_run(run(c), resume).await.unwrap() else {
        panic!("a takeover copies")
    };
    while !copy.step().await.unwrap() {}
    let mut second = copy.finish().await.unwrap();
    assert_ne!(second.name, stale.name);
    // The stale run goes on writing (and may even finish) after the takeover.
    let _ = stale.out.append(b"stale bytes\n").await;
    let _ = stale.out.sync().await;
    let _ = stale.out.finish().await;
    append(&mut second, &tail).await;
    second.out.finish().await.unwrap();
    assert_eq!(read(storage, &second.name, 0, len).await, whole, "the new run's file: prefix + its own rows");

    // Taken over from a clean release: continued in place after the checkpoint.
    let mut released = storage.create_run(run(d)).await.unwrap();
    let cp = append(&mut released, &one).await.unwrap();
    let _ = released.out.append(b"past the checkpoint\n").await; // never checkpointed
    drop(released.out);
    let resume = Resume { file: Some(&released.name), bytes: part as u64, state: cp.state.as_ref(), adopt: true };
    let Prepared::Ready(mut adopted) = storage.prepare_run(run(Uuid::new_v4()), resume).await.unwrap() else {
        panic!("a clean release is adopted")
    };
    assert_eq!(adopted.name, released.name);
    append(&mut adopted, &two).await;
    append(&mut adopted, &tail).await;
    adopted.out.finish().await.unwrap();
    assert_eq!(read(storage, &adopted.name, 0, len).await, whole);

    // A checkpoint past the stored bytes, or of a missing file, is reported as lost.
    for (name, bytes) in [(first_name.as_str(), 1 << 40), ("nowhere/x.csv", 2 * part as u64)] {
        let resume = Resume { file: Some(name), bytes, state: at_two.state.as_ref(), adopt: false };
        let lost = storage.prepare_run(run(Uuid::new_v4()), resume).await;
        assert!(matches!(lost, Err(PrepareError::CheckpointLost { .. })), "{name} at {bytes}: {lost:?}");
    }

    // An abandoned copy leaves nothing behind.
    let mut source = storage.create_run(run(Uuid::new_v4())).await.unwrap();
    let cp = append(&mut source, &one).await.unwrap();
    let resume = Resume { file: Some(&source.name), bytes: part as u64, state: cp.state.as_ref(), adopt: false };
    let Prepared::Copy(copy) = storage.prepare_run(run(Uuid::new_v4()), resume).await.unwrap() else {
        panic!("a takeover copies")
    };
    copy.abandon().await;
    let names: Vec<String> = storage.run_files(export_id).await.unwrap().into_iter().map(|(n, _)| n).collect();
    for name in [&first_name, &second.name, &adopted.name, &source.name] {
        assert!(names.contains(name), "{name} is listed: {names:?}");
    }
    assert!(names.len() <= 5, "no file of the abandoned copy: {names:?}"); // + the stale run's
    assert!(storage.exports().await.unwrap().contains(&export_id));

    // Completion keeps only the completed file; removal removes it all.
    storage.remove_other_runs(export_id, &[&second.name]).await;
    let left: Vec<String> = storage.run_files(export_id).await.unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(left, vec![second.name.clone()], "only the kept file is left");
    assert_eq!(read(storage, &second.name, 0, len).await, whole);
    storage.remove_file(&second.name).await;
    assert!(storage.open(&second.name).await.is_err());
    storage.remove_export(export_id).await;
    assert!(!storage.exports().await.unwrap().contains(&export_id));
}

#[tokio::test]
async fn the_local_directory_keeps_the_storage_contract() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalDir::new(dir.path()).unwrap();
    conformance(&storage, 64 * 1024).await;

    // An open file reads to its end even when deleted meanwhile.
    let export_id = Uuid::new_v4();
    let mut run =
        storage.create_run(RunId { export_id, token: Uuid::new_v4(), extension: "csv", piece: None }).await.unwrap();
    append(&mut run, b"header\nrow 1\n").await.unwrap();
    let open = storage.open(&run.name).await.unwrap();
    storage.remove_export(export_id).await;
    let chunks: Vec<_> = open.read(0, 13).await.unwrap().try_collect().await.unwrap();
    assert_eq!(chunks.concat(), b"header\nrow 1\n");
}

#[tokio::test]
async fn object_storage_keeps_the_storage_contract() {
    let garage = Garage::start();
    let storage = garage.storage("contract", exportd::storage::MIN_PART_SIZE);
    conformance(&storage, exportd::storage::MIN_PART_SIZE as usize).await;

    // Parts wait for a part's worth at chunk boundaries, and are cut mid-chunk only at twice
    // that: a chunk boundary short of a part is not durable.
    let mut run = storage
        .create_run(RunId { export_id: Uuid::new_v4(), token: Uuid::new_v4(), extension: "csv", piece: None })
        .await
        .unwrap();
    assert!(append(&mut run, b"short\n").await.is_none(), "bytes short of a part are not durable yet");
    let part = exportd::storage::MIN_PART_SIZE as usize;
    let state = append(&mut run, &block(3, part)).await.expect("a part's worth is durable").state.unwrap();
    assert_eq!(state["parts"].as_array().unwrap().len(), 1);
    assert_eq!(state["parts"][0]["size"], part as u64 + 6);

    // A checkpoint without the upload it was written to (another backend's) is lost.
    let resume = Resume { file: Some(&run.name), bytes: part as u64 + 6, state: None, adopt: true };
    let lost = storage
        .prepare_run(RunId { export_id: Uuid::new_v4(), token: Uuid::new_v4(), extension: "csv", piece: None }, resume)
        .await;
    assert!(matches!(lost, Err(PrepareError::CheckpointLost { .. })), "{lost:?}");
}
