// node-postgres through pgsplit: named prepared statements (name:),
// reads on replicas, writes and a transaction on the primary, NULLs.
const { Client } = require('pg');

const port = Number(process.env.PGSPLIT_PORT);
const primary = Number(process.env.PRIMARY_PORT);
const replicas = new Set(process.env.REPLICA_PORTS.split(',').map(Number));

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
  // read-your-writes keeps this session on the primary until a replica has
  // replayed the CREATE; give the monitor a moment to see that.
  await new Promise((r) => setTimeout(r, 1000));
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
  await client.end();
  console.log('node-postgres ok');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
