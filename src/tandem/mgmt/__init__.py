"""CloudStack-compatible management server and the simulated hypervisor host.

Stateless servers, one MariaDB: sessions, jobs and objects live in the
database, so any instance answers any request and a dead instance loses
nothing. Modules, one job each:

- `server`      aiohttp app on `/client/api` and `/health`; the request pipeline
- `envelopes`   CloudStack response/error envelopes (JSON, XML) and error codes
- `signing`     HMAC-SHA1 request signatures, signatureVersion 3 `expires` (pure)
- `auth`        users, accounts, domains, passwords, API keys, DB sessions
- `commands`    command registry and parameter validation; `listing` paging
- `cmd_catalog`, `cmd_vm`, `cmd_auth`   the API commands
- `views`       rows -> CloudStack objects
- `jobs`        async jobs: ownership, heartbeat lease, takeover, per-object queue
- `vmstates`    what each VM command does in each state (pure table)
- `vmjobs`      executes those plans against the host and the database
- `hostclient`  calls to a hypervisor host, idempotent by request id
- `simhost`     the simulated host process (state file, effect log)
- `db`          pymysql pool with bounded, safe retries across DB failovers
- `migrations`  numbered schema migrations
(haproxy in front of several servers: `tandem.cluster.resources.haproxy`)
- `secretbox`   API secret keys encrypted at rest

Run: `tandem mgmt simhost --state-dir D --listen 127.0.0.1:8250`, then
`tandem mgmt create-admin --db mysql://USER@HOST:PORT/DB` and
`tandem mgmt serve --db ... --server-id mgmt1 --listen 127.0.0.1:8080`
(database password from `--db-password-file` or `TANDEM_DB_PASSWORD`; both
commands also need `--key-file` or `TANDEM_MGMT_KEY_FILE`, the file that keys the
sealing of API secret keys: in a cluster the cluster secret file).
"""
