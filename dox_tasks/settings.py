"""One typed settings object, read from the environment.

Names follow the issue's contract: ``DOX_*`` for DOX's own settings and the
seed runbook's names (``MAX_FILE_SIZE_MB``, ``WORKFLOW_TIMEOUT``…) with their
defaults. With nothing set, DOX runs *embedded*: an in-process broker, SQLite
under ``$DOX_HOME`` and no servers at all.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import os
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qsl, urlencode, urlparse

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .contract import QUEUES
from .errors import ConfigError

#: Debian's clamd socket; the embedded default uses it when something listens there.
DEBIAN_CLAMD_SOCKET = "/var/run/clamav/clamd.ctl"
EMBEDDED_BROKER = "memory://localhost/"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


SHIPPED_PACKAGE = "dox_tasks.workflow_defs"


def shipped_definitions() -> Path:
    """The folder of definitions installed with DOX (the default of ``DOX_DEFS_DIR``).

    Found through ``importlib.resources``, not beside the source: a wheel puts the YAML in
    site-packages, an editable install maps the package to the checkout's ``workflow_defs/``,
    and both answer here. The loader globs and reports file:line, so it needs a real folder:
    an import from a zip archive is refused with the way out.
    """
    folder = importlib.resources.files(SHIPPED_PACKAGE)
    if not isinstance(folder, Path):
        raise ConfigError(
            f"the shipped definitions ({SHIPPED_PACKAGE}) are not a folder on disk ({folder}):"
            " set DOX_DEFS_DIR to a folder of workflow definitions"
        )
    return folder


def stream_key(namespace: str) -> str:
    """The Redis stream every event goes to (declared here so the settings can check it is not
    a broker key)."""
    return f"{namespace}:events"


class Settings(BaseSettings):
    """Every knob DOX has. Secrets (passwords inside URLs) are never logged: use :meth:`redacted`."""

    model_config = SettingsConfigDict(extra="ignore")

    broker_url: str = Field(EMBEDDED_BROKER, validation_alias=_env("DOX_BROKER_URL"))
    result_backend: str | None = Field(None, validation_alias=_env("DOX_RESULT_BACKEND"))
    database_url: str | None = Field(None, validation_alias=_env("DOX_DATABASE_URL"))
    clamd_url: str | None = Field(None, validation_alias=_env("DOX_CLAMD_URL"))
    redis_url: str | None = Field(
        None,
        validation_alias=_env("DOX_REDIS_URL"),
        description="Redis for rate limits and the event stream; defaults to a redis:// broker URL.",
    )
    home: Path = Field(Path("./.dox"), validation_alias=_env("DOX_HOME"))
    storage_root: Path | None = Field(None, validation_alias=_env("DOX_STORAGE_ROOT"))
    state_dir: Path | None = Field(None, validation_alias=_env("DOX_STATE_DIR"))
    memory_bank_path: Path | None = Field(None, validation_alias=_env("MEMORY_BANK_PATH"))
    inbox_root: Path | None = Field(None, validation_alias=_env("DOX_INBOX_ROOT"))
    defs_dir: Path | None = Field(None, validation_alias=_env("DOX_DEFS_DIR"))
    broker_key_prefix: str | None = Field(
        None,
        validation_alias=_env("DOX_BROKER_KEY_PREFIX"),
        description="Prefix for every broker key in Redis (share one Redis between setups).",
    )
    namespace: str = Field(
        "dox",
        validation_alias=_env("DOX_NAMESPACE"),
        description="Prefix of Redis keys, the event stream (<ns>:events) and channels (<ns>.workflow.*).",
    )

    max_file_size_mb: float = Field(50, validation_alias=_env("MAX_FILE_SIZE_MB"), gt=0)
    clamav_enabled: bool = Field(True, validation_alias=_env("CLAMAV_ENABLED"))
    clamd_timeout_s: float = Field(100.0, validation_alias=_env("DOX_CLAMD_TIMEOUT"), gt=0)
    rate_limit_per_user_per_day: int = Field(100, validation_alias=_env("RATE_LIMIT_PER_USER_PER_DAY"), ge=0)
    workflow_timeout: int = Field(300, validation_alias=_env("WORKFLOW_TIMEOUT"), gt=1)
    workflow_retry_attempts: int = Field(3, validation_alias=_env("WORKFLOW_RETRY_ATTEMPTS"), ge=0)
    workflow_retry_backoff: float = Field(1.5, validation_alias=_env("WORKFLOW_RETRY_BACKOFF"), ge=1)
    workflow_retry_delay: float = Field(2.0, validation_alias=_env("WORKFLOW_RETRY_DELAY"), ge=0)
    workflow_concurrency: int = Field(10, validation_alias=_env("WORKFLOW_CONCURRENCY"), gt=0)
    visibility_timeout: int = Field(3600, validation_alias=_env("DOX_VISIBILITY_TIMEOUT"), gt=0)
    worker_max_memory_mib: int = Field(512, validation_alias=_env("DOX_WORKER_MAX_MEMORY_MIB"), gt=0)
    db_pool_size: int = Field(2, validation_alias=_env("DOX_DB_POOL_SIZE"), ge=2)

    allowed_types: Annotated[list[str], NoDecode] = Field(["pdf"], validation_alias=_env("DOX_ALLOWED_TYPES"))
    duplicate_scope: str = Field("user", validation_alias=_env("DOX_DUPLICATE_SCOPE"))
    recognize_max_pages: int = Field(5, validation_alias=_env("DOX_RECOGNIZE_MAX_PAGES"), gt=0)
    parser_cpu_s: int = Field(10, validation_alias=_env("DOX_PARSER_CPU_S"), gt=0)
    parser_memory_mib: int = Field(768, validation_alias=_env("DOX_PARSER_MEMORY_MIB"), gt=0)
    #: PDFs with embedded files are accepted and flagged (clamd scans inside them) unless set.
    reject_embedded_files: bool = Field(False, validation_alias=_env("DOX_REJECT_EMBEDDED_FILES"))

    # -- scheduling and operations --------------------------------------------------
    beat_lock_ttl_s: int = Field(
        30,
        validation_alias=_env("DOX_BEAT_LOCK_TTL"),
        ge=2,
        le=55,
        description="A dead Beat's lock expires after this; a standby takes over within TTL + 1 s.",
    )
    beat_grace_s: int = Field(120, validation_alias=_env("DOX_BEAT_GRACE"), gt=0)
    reaper_queued_after_s: int = Field(
        600,
        validation_alias=_env("DOX_REAPER_QUEUED_AFTER"),
        gt=0,
        description="A workflow whose step has waited this long without starting is examined.",
    )
    reaper_grace_s: int = Field(60, validation_alias=_env("DOX_REAPER_GRACE"), ge=0)
    reaper_max_redrives: int = Field(3, validation_alias=_env("DOX_REAPER_MAX_REDRIVES"), ge=0)
    retention_days: int = Field(90, validation_alias=_env("DOX_RETENTION_DAYS"), gt=0)
    quarantine_retention_days: int = Field(30, validation_alias=_env("DOX_QUARANTINE_RETENTION_DAYS"), gt=0)
    rescan_limit: int = Field(500, validation_alias=_env("DOX_RESCAN_LIMIT"), ge=0)
    freshclam_timeout_s: float = Field(120.0, validation_alias=_env("DOX_FRESHCLAM_TIMEOUT"), gt=0)
    disk_min_free_pct: float = Field(10.0, validation_alias=_env("DOX_DISK_MIN_FREE_PCT"), ge=0, le=100)
    teams_file: Path | None = Field(None, validation_alias=_env("DOX_TEAMS_FILE"))
    backup_dir: Path | None = Field(None, validation_alias=_env("DOX_BACKUP_DIR"))
    backup_retention_days: int = Field(30, validation_alias=_env("DOX_BACKUP_RETENTION_DAYS"), gt=0)

    # -- surfaces ---------------------------------------------------------------------
    metrics_host: str = Field(
        "127.0.0.1",
        validation_alias=_env("DOX_METRICS_HOST"),
        description="Address the metrics servers bind (worker port and `dox metrics serve`).",
    )
    metrics_timeout_s: float = Field(
        10.0,
        validation_alias=_env("DOX_METRICS_TIMEOUT"),
        gt=0,
        description="Seconds a metrics client has to send its request (and per read/write after).",
    )
    metrics_max_connections: int = Field(32, validation_alias=_env("DOX_METRICS_MAX_CONNECTIONS"), gt=0)
    storage_group_access: bool = Field(
        False,
        validation_alias=_env("DOX_STORAGE_GROUP_ACCESS"),
        description="Stored files 0440 and folders 0750 (a shared-storage group) instead of 0400/0700.",
    )
    # -- the HTTP API (`dox api serve`) ------------------------------------------------
    api_host: str = Field("127.0.0.1", validation_alias=_env("DOX_API_HOST"))
    api_port: int = Field(5000, validation_alias=_env("DOX_API_PORT"), gt=0, lt=65536)
    api_key: SecretStr | None = Field(
        None,
        validation_alias=_env("API_KEY"),
        description="The seed's operator key: every scope, as DOX_API_KEY_USER. Never logged.",
    )
    api_key_user: str = Field("api", validation_alias=_env("DOX_API_KEY_USER"), min_length=1)
    require_auth: bool = Field(
        True,
        validation_alias=_env("REQUIRE_AUTH"),
        description="false (no key asked) is refused unless the API listens on a loopback address.",
    )
    api_docs: bool = Field(
        True, validation_alias=_env("DOX_API_DOCS"), description="off hides /api/v1/docs and the OpenAPI."
    )
    api_url: str | None = Field(
        None,
        validation_alias=_env("DOX_API_URL"),
        description="Where `dox health` finds the API (its /ready), e.g. http://api:5000; unset: unchecked.",
    )
    # -- the API's limits, proxies and CORS (dox_tasks/api/edge.py, dox_tasks/apilimits.py) ---------
    api_rate_per_min: int = Field(
        600,
        validation_alias=_env("DOX_API_RATE_PER_MIN"),
        ge=0,
        description="Requests a minute per API key (API_KEY and keyless: per user), a token bucket"
        " in Redis holding one minute's worth; 0 turns it off.",
    )
    api_auth_failures_per_min: int = Field(
        20,
        validation_alias=_env("DOX_API_AUTH_FAILURES_PER_MIN"),
        gt=0,
        description="Refused keys a minute from one client address before it is answered 429.",
    )
    api_max_concurrent: int = Field(
        64,
        validation_alias=_env("DOX_API_MAX_CONCURRENT"),
        ge=0,
        description="Requests one server process handles at once (503 beyond; /health, /ready"
        " exempt); 0 turns it off.",
    )
    api_cors_origins: Annotated[list[str], NoDecode] = Field(
        [], validation_alias=_env("DOX_API_CORS_ORIGINS"), description="Origins browsers may call from."
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        [],
        validation_alias=_env("DOX_TRUSTED_PROXIES"),
        description="Addresses or CIDRs whose X-Forwarded-For is believed.",
    )
    log_dir: Path | None = Field(
        None, validation_alias=_env("DOX_LOG_DIR"), description="Where auth.log is written (also to stderr)."
    )

    # uploads (POST /api/v1/documents, /api/v1/validate/scan)
    api_body_timeout_s: float = Field(
        30,
        validation_alias=_env("DOX_API_BODY_TIMEOUT_S"),
        gt=0,
        le=3600,
        description="An upload whose body stops arriving this long is cut off (408), its staging removed.",
    )
    api_head_timeout_s: float = Field(
        10,
        validation_alias=_env("DOX_API_HEAD_TIMEOUT_S"),
        gt=0,
        le=3600,
        description="A connection whose request head is not complete this long after it opened"
        " (or after its previous answer) is closed (408 if it had begun one).",
    )
    # live events (GET /api/v1/events)
    api_sse_heartbeat_s: float = Field(
        15.0,
        validation_alias=_env("DOX_API_SSE_HEARTBEAT_S"),
        gt=0,
        le=300,
        description="An SSE comment line after this many quiet seconds, so proxies keep the connection.",
    )
    api_sse_overlap_s: float = Field(
        60.0,
        validation_alias=_env("DOX_API_SSE_OVERLAP_S"),
        ge=0,
        description="Replays from PostgreSQL start this much before a resumed position: more than the"
        " clock skew between hosts plus the delay between an event's row and its stream entry.",
    )

    @field_validator("api_cors_origins", mode="before")
    @classmethod
    def _origins(cls, v: object) -> object:
        """Explicit origins only (``scheme://host[:port]``): ``*`` would let every web page call."""
        items = [o.strip().rstrip("/") for o in v.split(",") if o.strip()] if isinstance(v, str) else v
        for origin in items if isinstance(items, list) else []:
            parsed = urlparse(origin)
            if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path or parsed.query:
                raise ValueError(
                    f"DOX_API_CORS_ORIGINS: {origin!r} is not an origin like https://app.example.com"
                    " (explicit origins only, never *)"
                )
        return items

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, v: object) -> object:
        """Normalised (``10.1.2.3/8`` → ``10.0.0.0/8``): uvicorn takes what it cannot parse as a
        literal name that no peer address ever equals, so a typo would silently trust nobody."""
        items = [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v
        if not isinstance(items, list):
            return items
        try:
            return [
                str(ipaddress.ip_network(p, strict=False) if "/" in p else ipaddress.ip_address(p))
                for p in items
            ]  # noqa: E501
        except ValueError:
            raise ValueError(
                f"DOX_TRUSTED_PROXIES: {v!r} holds something that is not an address or CIDR"
                " (e.g. 10.0.0.5, 10.0.0.0/24)"
            ) from None

    @field_validator("allowed_types", mode="before")
    @classmethod
    def _split_types(cls, v: object) -> object:
        if isinstance(v, str):
            return [t.strip().lower() for t in v.split(",") if t.strip()]
        return v

    @field_validator("duplicate_scope")
    @classmethod
    def _scope(cls, v: str) -> str:
        if v not in ("user", "global"):
            raise ValueError("DOX_DUPLICATE_SCOPE must be 'user' or 'global'")
        return v

    # -- derived values -------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        """True when no broker is configured: everything runs in this process."""
        return self.broker_url.startswith("memory://")

    @property
    def max_file_size(self) -> int:
        return int(self.max_file_size_mb * 1024 * 1024)

    @property
    def storage(self) -> Path:
        return (self.storage_root or self.home / "store").resolve()

    @property
    def state(self) -> Path:
        return (self.state_dir or self.home / "state").resolve()

    @property
    def memory_banks(self) -> Path:
        return (self.memory_bank_path or self.state / "memory-banks").resolve()

    @property
    def teams(self) -> Path:
        return (self.teams_file or self.definitions / "teams.yaml").resolve()

    @property
    def backups(self) -> Path:
        return (self.backup_dir or self.home / "backups").resolve()

    @property
    def definitions(self) -> Path:
        """The one place that says where definitions live; teams.yaml and templates/ derive from it.

        ``DOX_DEFS_DIR`` if set, else the definitions installed with the package (a wheel has no
        ``workflow_defs/`` beside site-packages).
        """
        if self.defs_dir:
            return self.defs_dir.resolve()
        return shipped_definitions().resolve()

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'dox.db').resolve()}"

    @property
    def redis(self) -> str | None:
        if self.redis_url:
            return self.redis_url
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return None

    @property
    def soft_time_limit(self) -> int:
        """A little below the hard limit, so a step can record its own timeout."""
        return max(1, self.workflow_timeout - max(1, self.workflow_timeout // 20))

    @property
    def max_retry_delay(self) -> float:
        """Longest delay any retry can wait, jitter included."""
        return longest_retry_wait(
            self.workflow_retry_attempts, self.workflow_retry_backoff, self.workflow_retry_delay
        )

    def check(self) -> None:
        """Refuse configurations that cannot work; the message names both values.

        Redis redelivers a message whose worker has held it longer than the
        visibility timeout; a step that runs or waits that long would run twice.
        """
        vt = self.visibility_timeout
        if self.workflow_timeout >= vt:
            raise ConfigError(
                f"WORKFLOW_TIMEOUT={self.workflow_timeout}s reaches the broker visibility_timeout"
                f" DOX_VISIBILITY_TIMEOUT={vt}s: a step would be redelivered while it runs."
                " Lower WORKFLOW_TIMEOUT or raise DOX_VISIBILITY_TIMEOUT."
            )
        if self.max_retry_delay >= vt:
            raise ConfigError(
                f"the longest retry delay ({self.max_retry_delay:.0f}s from WORKFLOW_RETRY_DELAY="
                f"{self.workflow_retry_delay}, WORKFLOW_RETRY_BACKOFF={self.workflow_retry_backoff},"
                f" WORKFLOW_RETRY_ATTEMPTS={self.workflow_retry_attempts}) reaches the broker"
                f" visibility_timeout DOX_VISIBILITY_TIMEOUT={vt}s: the retry would run twice."
            )
        if self.clamd_url:
            parse_clamd_url(self.clamd_url)
        self._check_redis_keys()

    def _check_redis_keys(self) -> None:
        """DOX's own Redis keys must not be broker keys: a stream where kombu expects a list
        (or the reverse) makes the worker die with WRONGTYPE on its first message."""
        prefix = self.broker_key_prefix or ""
        broker = {f"{prefix}{k}" for k in ("unacked", "unacked_index", "unacked_mutex")}
        for q in QUEUES:
            broker |= {f"{prefix}{q}", f"{prefix}_kombu.binding.{q}"}
            broker |= {f"{prefix}{q}\x06\x16{n}" for n in range(10)}
        ours = {
            stream_key(self.namespace): "the event stream",
            f"{self.namespace}:beat:lock": "the Beat lock",
        }
        for key, what in ours.items():
            if key in broker:
                raise ConfigError(
                    f"DOX_NAMESPACE={self.namespace!r} and DOX_BROKER_KEY_PREFIX={prefix!r} make {what}"
                    f" ({key!r}) the same Redis key as a broker key: the worker would fail with"
                    " WRONGTYPE. Change one of them (e.g. DOX_BROKER_KEY_PREFIX=dox-broker:)."
                )

    def redacted(self) -> dict[str, object]:
        """Settings safe to print: passwords inside URLs and secrets (API_KEY) are masked."""
        out: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, str) and "://" in value:
                value = redact_url(value)
            elif isinstance(value, SecretStr):
                value = "***"
            out[name] = value
        return out


#: Retries wait up to 25 % longer than the nominal delay, so workers do not retry in step.
RETRY_JITTER = 1.25


def retry_wait(retry_index: int, backoff: float, delay: float) -> float:
    """Nominal wait before retry ``retry_index`` (0-based): the delay grows by ``backoff``."""
    return float(delay * backoff**retry_index)


def longest_retry_wait(attempts: int, backoff: float, delay: float) -> float:
    """The longest any of ``attempts`` retries can wait, jitter included."""
    return retry_wait(attempts - 1, backoff, delay) * RETRY_JITTER if attempts else 0.0


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (a name other than localhost counts as not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def basic_auth_from_env(user_env: str, password_env: str, why: str, unsafe: bool) -> tuple[str, str] | None:
    """Basic-auth credentials for an HTTP surface, from the environment (never argv, never
    logged). Without them: ``None`` if the caller opted out, else a refusal saying why."""
    user, password = os.environ.get(user_env), os.environ.get(password_env)
    if user and password:
        return user, password
    if unsafe:
        return None
    raise ConfigError(
        f"{why}: set {user_env} and {password_env}"
        " (or pass --unsafe-no-auth on a machine nobody else can reach)"
    )


#: Query parameters whose value is a secret (compared case-insensitively, ``-``/``_`` ignored):
#: drivers take passwords this way too (``?password=…``, ``?sslpassword=…``, ``?token=…``).
SECRET_QUERY_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "sslpassword",
        "secret",
        "token",
        "key",
        "apikey",
        "accesskey",
        "secretkey",
        "auth",
        "authtoken",
        "credentials",
        "sig",
        "signature",
    }
)


def redact_url(url: str) -> str:
    """The URL with its password, and any secret-looking query parameter, shown as ``***``."""
    parsed = urlparse(url)
    if parsed.password:
        url = url.replace(f":{parsed.password}@", ":***@")
        parsed = urlparse(url)
    if parsed.query:
        pairs = parse_qsl(parsed.query, keep_blank_values=True)
        secret = [k.lower().replace("-", "").replace("_", "") in SECRET_QUERY_KEYS for k, _ in pairs]
        if any(secret):
            masked = [(k, "***" if s else v) for (k, v), s in zip(pairs, secret, strict=True)]
            query = urlencode(masked, safe="*")
            url = parsed._replace(query=query).geturl()
    return url


def parse_clamd_url(url: str) -> tuple[str, str | int]:
    """``tcp://host:port`` → ("tcp", host:port) ; ``unix:///path`` → ("unix", path)."""
    parsed = urlparse(url)
    if parsed.scheme == "tcp" and parsed.hostname and parsed.port:
        return ("tcp", f"{parsed.hostname}:{parsed.port}")
    if parsed.scheme == "unix" and parsed.path:
        return ("unix", parsed.path)
    raise ConfigError(
        f"DOX_CLAMD_URL={url!r} is not understood: use tcp://host:port or unix:///path/to/clamd.ctl"
    )


def load() -> Settings:
    """Read settings from the environment (called once per process by the runtime).

    A value that does not parse is a :class:`ConfigError` naming the variable and what it
    must be, never the value (it may be a secret)."""
    try:
        return Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'settings'}: {e.get('msg', 'invalid')}"
            for e in exc.errors(include_input=False, include_url=False)
        ]
        raise ConfigError("invalid setting: " + "; ".join(problems)) from None
