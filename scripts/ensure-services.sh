#!/usr/bin/env bash
# Start the local RabbitMQ and PostgreSQL when they are installed but stopped.
# Where they are not installed at all, the tests start them with testcontainers
# (a Docker engine is needed then) or skip with a message saying what is missing.
set -u
wait_port() {  # host port seconds
  for _ in $(seq 1 "$3"); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 1
  done
  return 1
}
if ! wait_port 127.0.0.1 5672 1 && command -v rabbitmq-server >/dev/null; then
  echo "starting RabbitMQ"; rabbitmq-server -detached || true
  wait_port 127.0.0.1 5672 60 || echo "warning: RabbitMQ did not come up" >&2
fi
if ! wait_port 127.0.0.1 5432 1 && command -v pg_ctlcluster >/dev/null; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_port 127.0.0.1 5432 30 || echo "warning: PostgreSQL did not come up" >&2
fi
exit 0
