#!/usr/bin/env bash
# Run the test suite against the real services (RabbitMQ, PostgreSQL) found from
# TEST_AMQP_URL / TEST_POSTGRES_URL or the local defaults. pytest exits 5 when it
# collected no test; that is a failure here too, with a clear message.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PATH"
.venv/bin/ruff check . || exit 1
.venv/bin/mypy || exit 1
# Two processes (pytest-xdist): most tests wait on real workers, brokers and databases rather than
# compute, so two halves in parallel finish in well under ten minutes on a 2-core machine.
.venv/bin/pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-2}" "$@"
code=$?
if [ "$code" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
fi
exit "$code"
