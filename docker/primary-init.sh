#!/bin/bash
# Runs once in the primary's fresh data directory (docker-entrypoint-initdb.d):
# the application role and database, and replication access for the replicas.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" <<SQL
CREATE ROLE app LOGIN PASSWORD '${APP_PASSWORD:-app}';
CREATE DATABASE app OWNER app;
CREATE ROLE replicator REPLICATION LOGIN PASSWORD '${REPLICATION_PASSWORD:-replicator}';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
