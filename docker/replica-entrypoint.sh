#!/bin/bash
# A streaming replica: on first start, clone the primary with pg_basebackup -R;
# then run PostgreSQL as usual.
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h pg1 -p 5432 -U postgres; do sleep 1; done
  export PGPASSWORD="${REPLICATION_PASSWORD:-replicator}"
  pg_basebackup -h pg1 -p 5432 -U replicator -D "$PGDATA" -R -X stream -c fast
  chmod 700 "$PGDATA"
fi
exec docker-entrypoint.sh postgres -c hot_standby=on
