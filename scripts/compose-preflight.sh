#!/bin/sh
# Refuses to start the production stack (docker-compose.yml) while a secret is missing or still
# the placeholder from .env.example. Run it before compose:
#
#   scripts/compose-preflight.sh && docker compose up -d
#
# Reads ENV_FILE (default: .env next to docker-compose.yml); a variable set in the environment
# wins over the file, as it does for docker compose. Exit 0: every secret is set; exit 1: one
# line per problem on stderr.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
env_file=${1:-$root/.env}
problems=0

# The value docker compose would use for $1: the environment, else the file's last assignment.
value_of() {
  if eval "[ -n \"\${$1+set}\" ]"; then
    eval "printf '%s' \"\$$1\""
    return
  fi
  [ -f "$env_file" ] || return 0
  sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$env_file" | tail -n 1 |
    sed -e 's/[[:space:]]*$//' -e "s/^\"\(.*\)\"\$/\1/" -e "s/^'\(.*\)'\$/\1/"
}

# Where the value of $1 comes from, for the messages.
source_of() {
  if eval "[ -n \"\${$1+set}\" ]"; then echo "the environment"; else echo "$env_file"; fi
}

refuse() {
  echo "compose preflight: $1" >&2
  problems=$((problems + 1))
}

# name, shortest length accepted
for spec in POSTGRES_PASSWORD:8 ARGILLA_OWNER_PASSWORD:8 ARGILLA_API_KEY:8 \
  ARGILLA_AUTH_SECRET_KEY:32; do
  name=${spec%%:*}
  shortest=${spec#*:}
  value=$(value_of "$name")
  from=$(source_of "$name")
  case $value in
    "") refuse "$name is not set; set it in $from (\`openssl rand -hex 32\` makes one)" ;;
    *change-me*) refuse "$name is still the .env.example placeholder; replace it in $from (\`openssl rand -hex 32\` makes one)" ;;
    *)
      if [ "${#value}" -lt "$shortest" ]; then
        refuse "$name is shorter than $shortest characters; use a longer one (\`openssl rand -hex 32\`)"
      fi
      ;;
  esac
done

others=$( [ -f "$env_file" ] && ls -ld "$env_file" | cut -c 5-10 || true)
if [ "${others#*r}" != "$others" ]; then
  echo "compose preflight: warning: $env_file holds secrets and other users can read it; chmod 600 $env_file" >&2
fi

if [ "$problems" -gt 0 ]; then
  echo "compose preflight: refusing to start the stack ($problems problem(s) above)" >&2
  exit 1
fi
echo "compose preflight: secrets set"
