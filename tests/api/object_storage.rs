//! Exports to S3-compatible object storage (a real Garage node): multipart uploads resumed
//! exactly after kill -9 without reading the rows of uploaded parts again, a takeover that a
//! stale run still uploading cannot harm, downloads from any API process (streamed, or by
//! redirect to a presigned URL), and nothing left behind.

use std::time::Duration;

use exportd::{
    export::engine::{Faults, Outcome, Pause, PauseAt},
    storage::Storage,
};
use serde_json::{Value, json};

use crate::{
    helpers::*,
    support::{
        process::{Exportd, exportd_env},
        s3::Garage,
    },
};

/// 5 MiB, the smallest part S3 takes: several parts even for a test-sized export.
const PART: u64 = exportd::storage::MIN_PART_SIZE;

/// A process's settings with one worker slot, 5 MiB parts, files in the `garage` bucket.
fn one_slot_env(db: &TestDb, dir: &std::path::Path, garage: &Garage) -> Vec<(String, String)> {
    let part = PART.to_string();
    let mut env = exportd_env(
        &db.url,
        dir,
        &[("EXPORTD_WORKER_CONCURRENCY", "1"), ("EXPORTD_S3_PART_SIZE", &part), ("RUST_LOG", "warn")],
    );
    env.extend(garage.env.iter().cloned());
    env
}

/// The export's objects and uploads in the bucket, by name.
async fn stored(storage: &dyn Storage, id: uuid::Uuid) -> Vec<String> {
    let mut names: Vec<String> = storage.run_files(id).await.unwrap().into_iter().map(|(n, _)| n).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_to_object_storage_resumes_exactly_after_kill_9_and_downloads_from_any_api_host() {
    let db = test_db().await;
    seed_nasty(&db.pool, 100_000).await; // ~30 MB of CSV: six parts of 5 MiB
    let reference = copy_reference(&db.pool).await;
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap(); // given, and never written: files go to the bucket
    let env = one_slot_env(&db, dir.path(), &garage);
    let mut worker = Exportd::serve(env.clone()).await;
    let api = worker.api();
    // ~6 s at 20 000 rows/s, chunks of 2 000 rows (~600 kB: a part every ~9 chunks).
    let id = api.create_export(Some(json!({"chunkSize": 2000, "maxRowsPerSecond": 20000}))).await;

    // kill -9 twice, each time after the checkpoint has passed one more part, at a random
    // moment within the part after it (buffering or uploading).
    for kill in 1..=2u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let row = export_row(&db.pool, id).await;
            if row.bytes_written as u64 >= kill * 2 * PART {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no checkpoint past {kill} parts: {row:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rand_below(400))).await;
        worker.kill9();
        let at_kill = export_row(&db.pool, id).await;
        // The checkpoint names exactly the durable parts: their sizes add up to its bytes.
        let state = at_kill.file_state.clone().expect("the checkpoint saves the upload").0;
        let parts = state["parts"].as_array().unwrap();
        let sum: u64 = parts.iter().map(|p| p["size"].as_u64().unwrap()).sum();
        assert_eq!(sum, at_kill.bytes_written as u64, "{state}");
        assert!(parts.len() >= kill as usize * 2 - 1);
        worker.start().await;
        // The next run starts from that checkpoint: no row in an uploaded part is read again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let start_id = loop {
            let runs = exportd::db::exports::list_runs(&db.pool, id).await.unwrap();
            if runs.len() as u64 == kill + 1 {
                break runs.last().unwrap().start_key.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "no new run after the restart");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(start_id, at_kill.last_processed_key, "kill {kill}: resumed from the checkpoint");
    }
    let end = api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(end["status"], "completed", "{end}");
    assert_eq!(end["rowsWritten"], 100_008);
    assert_same_bytes(&api.download(id).await, &reference);

    // Only the completed object is left: the killed runs' sealed objects and every upload are gone.
    let bucket = garage.storage("exportd", PART);
    let row = export_row(&db.pool, id).await;
    assert_eq!(stored(&bucket, id).await, vec![row.file_name.clone().unwrap()]);
    assert!(row.file_state.is_none(), "a completed export's file is a whole object");

    // A second host, API only, serves it too: whole, by range, with the same ETag.
    let mut api_env = env.clone();
    api_env.push(("EXPORTD_DOWNLOAD_REDIRECT".into(), "false".into()));
    let other = Exportd::api_only(api_env, &dir.path().join("api.log")).await;
    let other_api = other.api();
    let first = api.client.get(api.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
    let etag = first.headers()["etag"].clone();
    assert_same_bytes(&other_api.download(id).await, &reference);
    let ranged = other_api
        .client
        .get(other_api.url(&format!("/api/export/{id}/download")))
        .header("Range", "bytes=1000-5000999")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.headers()["etag"], etag);
    assert_eq!(ranged.bytes().await.unwrap(), &reference[1000..5_001_000]);

    // A third, redirecting downloads to presigned URLs of the object store.
    let mut redirect_env = env.clone();
    redirect_env.push(("EXPORTD_DOWNLOAD_REDIRECT".into(), "true".into()));
    let redirecting = Exportd::api_only(redirect_env, &dir.path().join("redirect.log")).await;
    let r_api = redirecting.api();
    let no_follow = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp =
        no_follow.get(r_api.url(&format!("/api/export/{id}/download"))).bearer_auth(&r_api.key).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(garage.var("AWS_ENDPOINT_URL")), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    // The presigned URL needs no key, serves the same bytes, and takes a Range.
    let direct = reqwest::get(&location).await.unwrap();
    assert_eq!(direct.status(), 200);
    assert!(direct.headers()["content-disposition"].to_str().unwrap().contains(&id.to_string()));
    assert_same_bytes(&direct.bytes().await.unwrap(), &reference);
    let part_of = reqwest::Client::new().get(&location).header("Range", "bytes=10-19").send().await.unwrap();
    assert_eq!(part_of.status(), 206);
    assert_eq!(part_of.bytes().await.unwrap(), &reference[10..20]);
    // A client following redirects gets the file as from any other host; the signed link too.
    assert_same_bytes(&r_api.download(id).await, &reference);
    let link = r_api.status(id).await["downloadUrl"].as_str().unwrap().to_owned();
    let link = if link.starts_with("http") { link } else { r_api.url(&link) };
    let via_link = no_follow.get(&link).send().await.unwrap();
    assert_eq!(via_link.status(), 302, "signed links redirect too");
    let linked = reqwest::get(via_link.headers()["location"].to_str().unwrap()).await.unwrap();
    assert_same_bytes(&linked.bytes().await.unwrap(), &reference);
    // HEAD answers from exportd itself.
    let head = r_api.client.head(r_api.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
    assert_eq!((head.status().as_u16(), head.headers()["etag"].clone()), (200, etag));
}

/// A pseudo-random number below `n` (a kill moment).
fn rand_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

/// A takes the export, checkpoints its first part and is paused before its second chunk; B
/// takes over (sealing A's upload) and is paused once its file is prepared; A goes on: its
/// next part upload fails against the sealed upload. A must stop as lost, not retry and claim
/// the export back from B (which then completes it, byte-identical, in its own object). The
/// schedule is forced by two pause points; a chunk is larger than a part, so every chunk end
/// uploads one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_is_not_harmed_by_the_stale_run_still_uploading() {
    let db = test_db().await;
    seed_nasty(&db.pool, 60_000).await;
    let reference = copy_reference(&db.pool).await;
    let per_row = reference.len() as u64 / 60_008;
    let chunk = (PART * 13 / 10).div_ceil(per_row); // 1.3 parts: one part per chunk end
    let garage = Garage::start();
    let opts = AppOptions { workers: 0, object_storage: garage.for_app("fencing", PART), ..Default::default() };
    let app = spawn_app(db, opts).await;
    let id = app.create_export(Some(json!({"chunkSize": chunk}))).await;

    let pause_a = Pause::new();
    let engine_a = (*app.engine)
        .clone()
        .with_faults(Faults { pause: Some((PauseAt::BeforeChunkWrite(2), pause_a.clone())), ..Default::default() });
    let first = tokio::spawn(async move { engine_a.execute(id, "runner-A").await });
    pause_a.reached().await;
    let at_pause = export_row(&app.db.pool, id).await;
    assert_eq!(at_pause.file_state.as_ref().unwrap().0["parts"].as_array().unwrap().len(), 1, "A checkpointed a part");
    let a_file = at_pause.file_name.unwrap();

    let pause_b = Pause::new();
    let engine_b = (*app.engine)
        .clone()
        .with_faults(Faults { pause: Some((PauseAt::FilePrepared, pause_b.clone())), ..Default::default() });
    let second = tokio::spawn(async move { engine_b.execute(id, "runner-B").await });
    pause_b.reached().await; // A's upload is sealed; B's own holds a copy of its part
    pause_a.resume();
    assert_eq!(first.await.unwrap(), Outcome::Lost, "A stops without claiming the export back");
    pause_b.resume();
    assert_eq!(second.await.unwrap(), Outcome::Completed);

    let row = export_row(&app.db.pool, id).await;
    assert_ne!(row.file_name.as_deref(), Some(a_file.as_str()), "B wrote its own object");
    assert_same_bytes(&app.download(id).await, &reference);
    let runs = exportd::db::exports::list_runs(&app.db.pool, id).await.unwrap();
    assert_eq!(runs.len(), 2, "A never claimed it back");
    assert_eq!((runs[1].worker.as_str(), runs[1].outcome.as_deref()), ("runner-B", Some("completed")));
    let bucket = garage.storage("fencing", PART);
    assert_eq!(stored(&bucket, id).await, vec![row.file_name.unwrap()], "A's sealed object is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_cancel_with_object_storage() {
    let db = test_db().await;
    seed_nasty(&db.pool, 40_000).await;
    let reference = copy_reference(&db.pool).await;
    let garage = Garage::start();
    let opts = AppOptions { workers: 2, object_storage: garage.for_app("gz", PART), ..Default::default() };
    let app = spawn_app(db, opts).await;
    let bucket = garage.storage("gz", PART);

    // gzip members per chunk, parts of whole members: decompresses to COPY's bytes.
    let id = app.create_export(Some(json!({"chunkSize": 500, "compression": "gzip"}))).await;
    let end = app.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(end["status"], "completed", "{end}");
    let gz = app.download(id).await;
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&gz[..]), &mut plain).unwrap();
    assert_same_bytes(&plain, &reference);

    // Progress shows before the first part is durable, and a cancel stops the run within a
    // chunk: its upload is aborted and nothing is left.
    let id = app.create_export(Some(json!({"chunkSize": 500, "maxRowsPerSecond": 4000}))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status: Value = app.status(id).await;
        if status["rowsWritten"].as_i64().unwrap() >= 1000 {
            assert_eq!(export_row(&app.db.pool, id).await.rows_written, 0, "nothing durable yet: progress only");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no progress shown: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = app.client.delete(app.url(&format!("/api/export/{id}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !stored(&bucket, id).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "left behind: {:?}", stored(&bucket, id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_export_to_object_storage_resumes_after_kill_9_at_its_checkpointed_part() {
    let db = test_db().await;
    seed_nasty(&db.pool, 150_000).await; // uncompressed Parquet: a few parts of 5 MiB
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let mut worker = Exportd::serve(one_slot_env(&db, dir.path(), &garage)).await;
    let api = worker.api();
    let body = json!({"format": {"type": "parquet", "codec": "none"}, "chunkSize": 2000, "maxRowsPerSecond": 30000});
    let id = api.create_export(Some(body)).await;
    // kill -9 once the checkpoint has passed a part, at a random moment after.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (export_row(&db.pool, id).await.bytes_written as u64) < PART {
        assert!(tokio::time::Instant::now() < deadline, "no checkpoint past a part");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(rand_below(400))).await;
    worker.kill9();
    let at_kill = export_row(&db.pool, id).await;
    // Saved row groups: exactly those within the checkpointed (uploaded) parts.
    let bases: Vec<i64> =
        sqlx::query_scalar("select base from export_row_groups where export_id = $1 order by position")
            .bind(id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(bases[0], 4);
    assert!(bases.iter().all(|b| *b < at_kill.bytes_written), "{bases:?} {at_kill:?}");
    assert_eq!(bases.len() as i64, at_kill.rows_written / 2000, "a row group per checkpointed chunk");
    worker.start().await;
    let s = api.wait_finished(id, Duration::from_secs(90)).await;
    assert_eq!(s["status"], "completed", "{s}");
    let file = api.download(id).await;
    let columns = exportd::datasets::default_config_columns("orders").unwrap();
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let types = crate::support::formats::sql_types(&db.pool, "orders", &columns).await;
    let reference = crate::support::formats::reference(&db.pool, "orders", &columns).await;
    crate::support::formats::check("parquet", &file, "parquet", &reference, &types, "string");
    worker.terminate();
}

/// A parallel export to object storage: each key range is an upload of its own, checkpointed a
/// part at a time; a range that crashes resumes from its own checkpointed parts (the others
/// from theirs), and the completed export's pieces are joined server-side into one object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_export_to_object_storage_resumes_each_range_and_joins_its_pieces_into_one_object() {
    let db = test_db().await;
    seed_nasty(&db.pool, 100_000).await; // ~30 MB: three ranges of ~10 MB, two parts each
    let reference = copy_reference(&db.pool).await;
    let garage = Garage::start();
    let opts = AppOptions { workers: 0, object_storage: garage.for_app("parallel", PART), ..Default::default() };
    let app = spawn_app(db, opts).await;
    // Chunks of 2000 rows (~600 kB): a part is durable about every 9th chunk end.
    let id = app.create_export(Some(json!({"chunkSize": 2000, "parallelism": 3}))).await;
    // Range 1 dies at its 12th chunk end: one part checkpointed, three chunks buffered past it.
    let crash = Faults { crash_before_checkpoint: Some(12), crash_in_range: Some(1), ..Default::default() };
    assert_eq!((*app.engine).clone().with_faults(crash).execute(id, "w1").await, Outcome::Crashed);
    let ranges = exportd::db::ranges::ranges(&app.db.pool, id).await.unwrap();
    assert_eq!(ranges.len(), 3);
    let crashed = &ranges[1];
    let parts = crashed.file_state.as_ref().unwrap().0["parts"].as_array().unwrap().len();
    assert_eq!(parts, 1, "range 1 checkpointed one part: {crashed:?}");
    assert!(crashed.rows_written > 0 && crashed.rows_written < 12 * 2000, "{crashed:?}");
    let row = export_row(&app.db.pool, id).await;
    let (progress, ranges_sum) = crate::support::helpers::progress_and_ranges(&app.db.pool, id).await;
    assert_eq!(progress, ranges_sum, "progress sums the ranges");
    assert!(row.progress_rows() > row.rows_written, "rows past the parts show as progress: {row:?}");

    assert_eq!(app.engine.execute(id, "w2").await, Outcome::Completed);
    assert_same_bytes(&app.download(id).await, &reference);
    // The pieces (each over 5 MiB) were joined server-side into one object (UploadPartCopy):
    // the file is that object alone, so downloads can be redirected to it.
    let row = export_row(&app.db.pool, id).await;
    assert_eq!(row.pieces(), None, "one object, not pieces: {row:?}");
    let file = row.file_name.clone().unwrap();
    let bucket = garage.storage("parallel", PART);
    assert_eq!(stored(&bucket, id).await, vec![file.clone()], "the pieces are deleted once joined");
    let mut object = Vec::new();
    let mut parts = bucket.open(&file).await.unwrap().read(0, reference.len() as u64).await.unwrap();
    while let Some(part) = futures::StreamExt::next(&mut parts).await {
        object.extend_from_slice(&part.unwrap());
    }
    assert_same_bytes(&object, &reference);
}

/// Pieces too small to be parts of one upload (S3 wants 5 MiB before the last) stay the file,
/// served one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_pieces_under_5_mib_stay_pieces() {
    let db = test_db().await;
    seed_nasty(&db.pool, 10_000).await; // ~3 MB: two pieces of ~1.5 MB
    let reference = copy_reference(&db.pool).await;
    let garage = Garage::start();
    let opts = AppOptions { workers: 0, object_storage: garage.for_app("small", PART), ..Default::default() };
    let app = spawn_app(db, opts).await;
    let id = app.create_export(Some(json!({"parallelism": 2}))).await;
    assert_eq!(app.engine.execute(id, "w1").await, Outcome::Completed);
    assert_same_bytes(&app.download(id).await, &reference);
    let row = export_row(&app.db.pool, id).await;
    let pieces: Vec<String> = row.pieces().expect("pieces").into_iter().map(|p| p.name).collect();
    assert_eq!(pieces.len(), 2);
    let mut sorted = pieces.clone();
    sorted.sort();
    assert_eq!(stored(&garage.storage("small", PART), id).await, sorted, "nothing else is left");
}

/// A Parquet export in two key ranges to object storage: each range's row groups are saved with
/// its checkpointed parts (the rows buffered past them are read again after a crash), the
/// footer over both is written as a last small piece, and the three are joined into one object
/// that independent readers read back with COPY's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_parquet_export_to_object_storage_resumes_a_range_and_ends_as_one_object() {
    let db = test_db().await;
    seed_nasty(&db.pool, 150_000).await; // uncompressed Parquet: two ranges of a few parts each
    sqlx::query("analyze orders").execute(&db.pool).await.unwrap();
    let garage = Garage::start();
    let opts = AppOptions { workers: 0, object_storage: garage.for_app("parquet-ranges", PART), ..Default::default() };
    let app = spawn_app(db, opts).await;
    let body = json!({"format": {"type": "parquet", "codec": "none"}, "chunkSize": 2000, "parallelism": 2});
    let id = app.create_export(Some(body)).await;
    // Range 1 (~38 chunks of ~270 kB) dies at its 25th chunk end: a part checkpointed, row
    // groups buffered past it.
    let crash = Faults { crash_before_checkpoint: Some(25), crash_in_range: Some(1), ..Default::default() };
    assert_eq!((*app.engine).clone().with_faults(crash).execute(id, "w1").await, Outcome::Crashed);
    let ranges = exportd::db::ranges::ranges(&app.db.pool, id).await.unwrap();
    let crashed = &ranges[1];
    assert!(crashed.rows_written > 0 && crashed.rows_written < 25 * 2000, "{crashed:?}");
    let bases: Vec<i64> = sqlx::query_scalar(
        "select base from export_row_groups where export_id = $1 and range_position = 1 order by position",
    )
    .bind(id)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(bases.len() as i64, crashed.rows_written / 2000, "a row group per checkpointed chunk: {bases:?}");
    assert_eq!(bases[0], 0, "range 1's piece holds no magic");
    assert!(bases.iter().all(|b| *b < crashed.bytes_written), "{bases:?} {crashed:?}");

    assert_eq!(app.engine.execute(id, "w2").await, Outcome::Completed);
    let row = export_row(&app.db.pool, id).await;
    assert_eq!(row.pieces(), None, "one object, not pieces: {row:?}");
    let file = row.file_name.clone().unwrap();
    assert_eq!(stored(&garage.storage("parquet-ranges", PART), id).await, vec![file], "pieces deleted once joined");
    let file = app.download(id).await;
    assert_eq!(file.len() as i64, row.bytes_written);
    let columns = exportd::datasets::default_config_columns("orders").unwrap();
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let types = crate::support::formats::sql_types(&app.db.pool, "orders", &columns).await;
    let reference = crate::support::formats::reference(&app.db.pool, "orders", &columns).await;
    crate::support::formats::check("parquet", &file, "parquet", &reference, &types, "string");
}
