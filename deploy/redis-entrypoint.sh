#!/bin/sh
# Start the broker Redis from a config file written here, from the environment.
#
# Why: `redis-server --requirepass …` puts the password on the command line, where
# `ps` and /proc/<pid>/cmdline show it to every local user. The file is 0600, owned
# by the user Redis runs as, and rewritten at every start, so changing .env and
# restarting is all a password change takes.
#
# Users (ACL): one `user …` line per user in write_users below, its password from its
# own environment variable through `quote` and printf (never echo); today the upstream
# user that may only push to the intake queue. `requirepass` is the default user's.
#
# REDIS_CONF_DIR (default /run/dox-redis) is where the file goes; REDIS_LAUNCHER
# (default the image's docker-entrypoint.sh, which drops root for the redis user)
# runs `redis-server <file> "$@"`; an empty REDIS_LAUNCHER runs redis-server directly.
set -eu

: "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
case "$REDIS_PASSWORD" in
*"
"*) echo "redis-entrypoint.sh: REDIS_PASSWORD must be one line" >&2; exit 2 ;;
esac
conf_dir="${REDIS_CONF_DIR:-/run/dox-redis}"
conf="$conf_dir/redis.conf"
launcher="${REDIS_LAUNCHER-docker-entrypoint.sh}"

# A value in Redis's config syntax: double-quoted, with \ and " escaped.
quote() {
    printf '"%s"' "$(printf '%s' "$1" | sed 's/[\\"]/\\&/g')"
}

# dox-upstream: what upstream services connect as to send `dox.submit` (README, "Using DOX
# from another service"). It may run exactly what kombu's Redis transport sends for
# send_task without a result backend (seen with MONITOR: PING, HELLO, MULTI/EXEC, LLEN on
# the queue and its priority lists, SADD on the queue's two binding sets, LPUSH), each
# command tied to exactly its keys by a selector: LLEN/LPUSH on `intake` and its three
# priority lists (`intake\x06\x163` …), SADD on the two binding sets. It cannot read a
# queue, push anywhere else, write another kind of key, or subscribe. No
# DOX_UPSTREAM_REDIS_PASSWORD, no such user. DOX_BROKER_KEY_PREFIX must match the
# workers' (their keys carry it).
write_users() {
    [ -n "${DOX_UPSTREAM_REDIS_PASSWORD:-}" ] || return 0
    prefix="${DOX_BROKER_KEY_PREFIX:-}"
    case "$prefix" in
    *[!A-Za-z0-9:_.-]*)
        echo "redis-entrypoint.sh: DOX_BROKER_KEY_PREFIX may hold only letters, digits and :_.-" >&2
        exit 2
        ;;
    esac
    case "$DOX_UPSTREAM_REDIS_PASSWORD" in
    *"
"*) echo "redis-entrypoint.sh: DOX_UPSTREAM_REDIS_PASSWORD must be one line" >&2; exit 2 ;;
    esac
    q="${prefix}intake"
    sep='\x06\x16'  # kombu's priority separator, as a Redis config escape (inside quotes)
    printf 'user dox-upstream reset on %s resetchannels -@all +ping +hello +multi +exec' \
        "$(quote ">$DOX_UPSTREAM_REDIS_PASSWORD")"
    printf ' "(+llen +lpush %%W~%s %%W~%s%s3 %%W~%s%s6 %%W~%s%s9)"' "$q" "$q" "$sep" "$q" "$sep" "$q" "$sep"
    printf ' "(+sadd %%W~%s_kombu.binding.intake %%W~%s_kombu.binding_permanent.intake)"\n' "$prefix" "$prefix"
}

umask 077
mkdir -p "$conf_dir"
tmp="$conf.tmp.$$"
{
    echo "# written by redis-entrypoint.sh at start-up; edits are lost on restart"
    printf 'requirepass %s\n' "$(quote "$REDIS_PASSWORD")" # printf: sh's echo eats backslashes
    # A broker must never evict: an evicted key is a lost message.
    echo "maxmemory-policy noeviction"
    echo "appendonly yes" # in the working directory: the image's /data volume
    write_users
} >"$tmp"
if [ "$(id -u)" = 0 ] && id redis >/dev/null 2>&1; then
    chown redis "$conf_dir" "$tmp"
fi
mv "$tmp" "$conf"
# shellcheck disable=SC2086 # an empty launcher must vanish
exec $launcher redis-server "$conf" "$@"
