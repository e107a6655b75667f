#!/usr/bin/env bash
# Start the local services the integration tests talk to, if they are not up (Mosquitto, PostgreSQL).
# Safe to run repeatedly; skips a service that is not installed here (its tests then fail and say so).
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Mosquitto leaves Nagle's algorithm on unless told: every hop then waits on delayed ACKs (44-88 ms round trips
# instead of 0.5 ms). Turn it off in the machine's broker config, once, and restart the broker if it runs.
MQ_CONF=/etc/mosquitto/mosquitto.conf
if [ -w "$MQ_CONF" ] && ! grep -q '^set_tcp_nodelay true' "$MQ_CONF"; then
  echo ">> enabling set_tcp_nodelay in $MQ_CONF"
  echo "set_tcp_nodelay true" >> "$MQ_CONF"
  if pgrep -x mosquitto >/dev/null; then
    pkill -x mosquitto
    for _ in $(seq 1 50); do pgrep -x mosquitto >/dev/null || break; sleep 0.1; done
  fi
fi

if ! port_open 1883; then
  if command -v mosquitto >/dev/null; then
    echo ">> starting Mosquitto"
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
  else
    echo "!! Mosquitto is not installed and nothing listens on 1883"
  fi
fi

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    echo ">> starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  else
    echo "!! PostgreSQL is not installed and nothing listens on 5432"
  fi
fi

for _ in $(seq 1 50); do
  port_open 1883 && port_open 5432 && exit 0
  sleep 0.2
done
echo "!! a service did not come up (1883: $(port_open 1883 && echo up || echo down), 5432: $(port_open 5432 && echo up || echo down))"
exit 0
