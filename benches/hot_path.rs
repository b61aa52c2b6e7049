//! criterion benches of the per-statement hot path: classification (cache
//! hits, fast path, a ~200-byte SELECT by token scan and by sqlparser, a
//! ~2 KB report query), frontend message
//! decoding, and relaying a 10,000-row result (framing and copying to the
//! client buffer, as the relay does, without sockets).

use std::hint::black_box;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use pgsplit::protocol::{codec, frontend};
use pgsplit::router::facts::{Catalog, FunctionRow, RelationRow};
use pgsplit::router::{Facts, Knowledge, Router, classify_text};

const SELECT_200: &str = "SELECT o.id, o.created_at, o.total, c.name, c.email FROM orders o \
    JOIN customers c ON c.id = o.customer_id WHERE o.status = $1 AND o.created_at > now() - interval '7 days' \
    ORDER BY o.created_at DESC LIMIT 50";

fn report_2k() -> String {
    let mut sql = String::from(
        "WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '30 days') SELECT ",
    );
    for i in 0..40 {
        sql.push_str(&format!(
            "sum(CASE WHEN region_id = {i} THEN total ELSE 0 END) AS region_{i}, "
        ));
    }
    sql.push_str("count(*) FROM recent r JOIN customers c ON c.id = r.customer_id GROUP BY c.segment ORDER BY 1 DESC");
    sql
}

/// What a router knows of PostgreSQL 15's built-ins (read from a real
/// catalog into the unit tests' fixture) and of the benched tables.
fn knowledge() -> Knowledge {
    let functions = include_str!("../src/router/testdata/pg15_functions.txt")
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, v)| FunctionRow {
            schema: "pg_catalog".into(),
            name: name.into(),
            volatile: v == "v",
            body: None,
        })
        .collect();
    // The tables the statements read (a real catalog knows them).
    let relations = ["orders", "customers", "pgbench_accounts", "t"]
        .iter()
        .map(|name| RelationRow {
            schema: "public".into(),
            name: (*name).into(),
            unlogged: false,
            definition: None,
        })
        .collect();
    let catalog = Catalog {
        functions,
        relations,
    };
    Knowledge::new(&[], Arc::new(Facts::build([("app", &catalog)])))
}

fn classify(c: &mut Criterion) {
    let router = Router::new(knowledge(), 32 << 20, None);
    router.classify(SELECT_200);
    let none = knowledge();
    let report = report_2k();
    let mut g = c.benchmark_group("classify");
    g.bench_function("cache_hit", |b| {
        b.iter(|| router.classify(black_box(SELECT_200)))
    });
    // Simple protocol: literals in the text, normalized into the cache key.
    const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 52341;";
    router.classify(PGBENCH_SELECT);
    g.bench_function("cache_hit_with_literals", |b| {
        b.iter(|| router.classify(black_box(PGBENCH_SELECT)))
    });
    g.bench_function("cache_key_with_literals", |b| {
        b.iter(|| pgsplit::router::cache_key(black_box(PGBENCH_SELECT)))
    });
    g.bench_function("fast_path_insert", |b| {
        b.iter(|| classify_text(black_box("INSERT INTO t (a, b) VALUES ($1, $2)"), &none))
    });
    // A plain SELECT is routed by the token scan; the same SELECT behind a
    // WITH goes through sqlparser.
    g.bench_function("scanned_select_200b", |b| {
        b.iter(|| classify_text(black_box(SELECT_200), &none))
    });
    let cte = format!("WITH w AS (SELECT 1) {SELECT_200}");
    g.bench_function(format!("parsed_cte_select_{}b", cte.len()), |b| {
        b.iter(|| classify_text(black_box(&cte), &none))
    });
    g.bench_function(format!("parsed_report_{}b", report.len()), |b| {
        b.iter(|| classify_text(black_box(&report), &none))
    });
    g.finish();
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn decode(c: &mut Criterion) {
    let mut batch = Vec::new();
    batch.extend(frame(
        b'P',
        b"s1\0SELECT * FROM t WHERE id = $1\0\0\x01\0\0\0\x17",
    ));
    batch.extend(frame(b'B', b"\0s1\0\0\x01\0\0\0\x01\0\0\0\x0212\0\0"));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'S', b""));
    c.bench_function("decode_extended_batch", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&batch[..]);
            while let Some(f) = codec::decode_frame(&mut buf, 1 << 30).unwrap() {
                match f.tag {
                    b'P' => {
                        black_box(frontend::parse(f.body()).unwrap());
                    }
                    b'B' => {
                        black_box(frontend::bind(f.body()).unwrap());
                    }
                    _ => {}
                }
            }
        })
    });
}

fn relay(c: &mut Criterion) {
    let mut result = BytesMut::new();
    for i in 0..10_000u32 {
        let id = i.to_string();
        let mut body = BytesMut::new();
        body.put_i16(3);
        for col in [id.as_str(), "some text value", "2026-11-26 07:00:00+00"] {
            body.put_i32(col.len() as i32);
            body.put_slice(col.as_bytes());
        }
        result.put_slice(&frame(b'D', &body));
    }
    result.put_slice(&frame(b'C', b"SELECT 10000\0"));
    result.put_slice(&frame(b'Z', b"I"));
    let bytes = result.freeze();
    c.bench_function("relay_10k_rows", |b| {
        let mut out = BytesMut::with_capacity(64 * 1024);
        b.iter(|| {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut rows = 0;
            while let Some(f) = codec::decode_frame(&mut buf, 1 << 30).unwrap() {
                rows += usize::from(f.tag == b'D');
                out.extend_from_slice(&f.bytes);
                if out.len() >= 64 * 1024 {
                    black_box(&out);
                    out.clear();
                }
            }
            black_box(rows)
        })
    });
}

criterion_group!(benches, classify, decode, relay);
criterion_main!(benches);
