#!/bin/sh
# The container's entry: the first argument selects the service (one image for all of them).
#
# Secrets mounted as files (compose `secrets:`, Kubernetes secret volumes): for each variable
# below, VAR_FILE=/path sets VAR to that file's content, so a secret never has to sit in the
# environment definition itself. Only these: some settings legitimately end in _FILE
# (CLASSIFIER_RULES_FILE, NOTIFIER_PLAYBOOKS_FILE) and name a file on purpose.
set -eu

for var in DATABASE_URL KAFKA_SASL_PASSWORD KAFKA_SSL_KEY_PASSWORD NOTIFIER_INGEST_API_KEY \
    NOTIFIER_WEBHOOKS; do
    eval "file=\${${var}_FILE:-}"
    if [ -n "$file" ]; then
        if [ ! -r "$file" ]; then
            echo "tierflow-entrypoint: ${var}_FILE=$file is not readable" >&2
            exit 2
        fi
        value=$(cat "$file")
        export "$var=$value"
        unset "${var}_FILE"
    fi
done

service=${1:-ingest}
case "$service" in
    ingest | classifier | notifier | console)
        shift
        exec python -m "tierflow_$service" "$@"
        ;;
    migrate | topics)
        shift
        exec tierflow "$service" "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
