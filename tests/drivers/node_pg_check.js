// node-postgres through pgsplit: named prepared statements (name:),
// reads on replicas, writes and a transaction on the primary, NULLs.
const { Client } = require('pg');

const port = Number(process.env.PGSPLIT_PORT);
const primary = Number(process.env.PRIMARY_PORT);
const replicas = new Set(process.env.REPLICA_PORTS.split(',').map(Number));

const admin = process.env.PGSPLIT_ADMIN;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Waits until every replica shows `sql` returning a count of at least 1
// (checked on the nodes themselves), and until the proxy's catalog facts
// place what it names (its /explain no longer says unknown).
async function replayedEverywhere(sql) {
  for (const p of replicas) {
    const direct = new Client({ host: '127.0.0.1', port: p, user: 'app', password: 'app', database: 'app' });
    await direct.connect();
    let done = false;
    for (let i = 0; i < 1000 && !done; i++) {
      const r = await direct.query(sql);
      done = Number(r.rows[0].count) >= 1;
      if (!done) await sleep(10);
    }
    await direct.end();
    check(done, `replica ${p} never replayed: ${sql}`);
  }
  for (let i = 0; i < 500; i++) {
    const answer = await fetch(`http://${admin}/explain`, { method: 'POST', body: JSON.stringify({ sql }) });
    if ((await answer.json()).reason !== 'unknown') return;
    await sleep(10);
  }
  check(false, `the proxy never learned what ${sql} names`);
}

const lsn = (text) => {
  const [high, low] = text.split('/');
  return BigInt(`0x${high}`) * 4294967296n + BigInt(`0x${low}`);
};

// Waits until the proxy's monitor has seen every replica replay what the
// primary has written (its /status), so reads spread over both.
async function monitorCaughtUp() {
  const direct = new Client({ host: '127.0.0.1', port: primary, user: 'app', password: 'app', database: 'app' });
  await direct.connect();
  const target = lsn((await direct.query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l);
  await direct.end();
  for (let i = 0; i < 1000; i++) {
    const nodes = (await (await fetch(`http://${admin}/status`)).json()).nodes;
    const reps = nodes.filter((n) => n.role === 'replica');
    if (reps.length > 0 && reps.every((n) => n.replay_lsn && lsn(n.replay_lsn) >= target)) return;
    await sleep(10);
  }
  check(false, 'the monitor never saw the replicas replay the CREATE');
}

function check(cond, what) {
  if (!cond) {
    console.error(`FAILED: ${what}`);
    process.exit(1);
  }
}

async function main() {
  const client = new Client({ host: '127.0.0.1', port, user: 'app', password: 'app', database: 'app' });
  await client.connect();
  await client.query('CREATE TABLE IF NOT EXISTS drv_node (id serial PRIMARY KEY, n int, t text)');
  // read-your-writes keeps this session's reads off a replica until it has
  // replayed the CREATE; they spread over both once the monitor saw both.
  await monitorCaughtUp();
  const seen = new Set();
  for (let i = 0; i < 20; i++) {
    const r = await client.query({ name: 'read-port', text: 'SELECT inet_server_port() AS port, $1::int * 2 AS x', values: [i] });
    const p = Number(r.rows[0].port);
    check(replicas.has(p), `named read served by ${p}`);
    check(r.rows[0].x === i * 2, 'named read result');
    seen.add(p);
  }
  check(seen.size === 2 || process.env.POOL_MODE === 'session', `both replicas: ${[...seen]}`);
  const w = await client.query({ name: 'write', text: 'INSERT INTO drv_node (n, t) VALUES ($1, $2) RETURNING inet_server_port() AS port', values: [1, null] });
  check(Number(w.rows[0].port) === primary, 'insert on the primary');
  const t = await client.query('SELECT $1::int AS a, $2::text AS b, $3::bool AS c, $4::text IS NULL AS d, $5::float8 AS e', [3, 'x', true, null, 1.5]);
  check(JSON.stringify(t.rows[0]) === JSON.stringify({ a: 3, b: 'x', c: true, d: true, e: 1.5 }), `types ${JSON.stringify(t.rows[0])}`);
  await client.query('BEGIN');
  const tp = await client.query('SELECT inet_server_port() AS port');
  check(Number(tp.rows[0].port) === primary, 'read in a transaction');
  await client.query('INSERT INTO drv_node (n) VALUES (5)');
  await client.query('COMMIT');
  // Once the replicas have replayed this session's writes, its reads
  // (read-your-writes on, named statements) run on them.
  await replayedEverywhere('SELECT count(*) FROM drv_node WHERE n = 5');
  for (let i = 0; i < 10; i++) {
    const r = await client.query({ name: 'after-writes', text: 'SELECT inet_server_port() AS port, count(*) AS n FROM drv_node WHERE n = $1', values: [5] });
    check(replicas.has(Number(r.rows[0].port)), `read after the writes replayed served by ${r.rows[0].port}`);
    check(Number(r.rows[0].n) >= 1, 'the replica has the session write');
  }
  await client.end();
  console.log('node-postgres ok');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
