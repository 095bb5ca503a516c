"""Settings: one frozen object, read from ``PACS_*`` environment variables and an optional file.

Read only in the entry point (``pacs.cli``) and passed down explicitly; nothing here runs at
import time. ``docs/configuration.md`` is generated from :data:`SETTINGS_DOCS` (see
``scripts/gen_docs.py``) and a test checks they agree.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from pacs.errors import ConfigError


@dataclass(frozen=True)
class RemoteAE:
    """A C-MOVE destination: ``AET@host:port``."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Setting:
    """Documentation of one setting, the source of docs/configuration.md."""

    env: str
    default: str
    doc: str


SETTINGS_DOCS: tuple[Setting, ...] = (
    Setting("PACS_CONFIG_FILE", "(none)",
            "Optional TOML file with the same settings in lower case without the `PACS_` "
            "prefix (e.g. `ae_title = \"MINIPACS\"`); environment variables win over it."),
    Setting("PACS_AE_TITLE", "MINIPACS", "Our DICOM Application Entity title (1-16 chars)."),
    Setting("PACS_DICOM_HOST", "0.0.0.0", "Interface the DICOM (DIMSE) service listens on."),
    Setting("PACS_DICOM_PORT", "11112", "TCP port of the DICOM service (0: any free port)."),
    Setting("PACS_HTTP_HOST", "127.0.0.1", "Interface of the HTTP app (DICOMweb, viewer)."),
    Setting("PACS_HTTP_PORT", "8080", "TCP port of the HTTP app."),
    Setting("PACS_DATA_DIR", "./pacs-data",
            "Folder for the embedded defaults (SQLite index, object folder, spool)."),
    Setting("PACS_DATABASE_URL", "sqlite:///<data dir>/index.db",
            "SQLAlchemy URL of the index: SQLite (embedded) or "
            "`postgresql+psycopg://user:pass@host:5432/db` (production)."),
    Setting("PACS_STORAGE_URL", "file://<data dir>/objects",
            "Where DICOM objects are kept: `file:///path` (folder) or `s3://bucket[/prefix]`."),
    Setting("PACS_S3_ENDPOINT", "(none)", "S3 endpoint `host:port` for `s3://` storage."),
    Setting("PACS_S3_ACCESS_KEY", "(none)", "S3 access key."),
    Setting("PACS_S3_SECRET_KEY", "(none)", "S3 secret key (never logged)."),
    Setting("PACS_S3_REGION", "(none)", "S3 region, when the server needs one."),
    Setting("PACS_S3_SECURE", "false", "Use TLS (https) to reach the S3 endpoint."),
    Setting("PACS_S3_SPOOL", "true",
            "With s3:// storage, acknowledge stores once fsynced in a local spool "
            "(`<data dir>/spool`) and upload to S3 in the background; pending uploads resume "
            "after a restart. `false`: every store waits for S3."),
    Setting("PACS_S3_UPLOAD_WORKERS", "4", "Parallel background uploads from the spool to S3 "
            "(threads of `pacs serve`'s uploads process, which runs at a lower priority than "
            "ingest)."),
    Setting("PACS_S3_UPLOAD_DEFER", "0",
            "Seconds that S3 uploads may wait while objects keep arriving (one within the last "
            "0.5 s). For an S3 server on the same machine as the archive (docker-compose.yml "
            "sets 30): a burst from the modalities is then acknowledged without the S3 server "
            "taking CPU from it (on two cores: 1.3-1.4x faster), and uploaded as soon as "
            "stores pause; the spool holds the objects meanwhile (fsynced, like the folder "
            "store, and served from there). Stores that never pause wait this long once, then "
            "share the machine with the uploads. The price: the last object of a burst reaches "
            "S3 later (25-40 % in our benchmark). 0: upload at once (an S3 service on other "
            "machines)."),
    Setting("PACS_REMOTE_AES", "(empty)",
            "Known peers and C-MOVE destinations: `AET@host:port,AET2@host:port`."),
    Setting("PACS_REQUIRE_KNOWN_AES", "false",
            "Accept associations only from calling AE titles listed in PACS_REMOTE_AES."),
    Setting("PACS_DUPLICATE_POLICY", "reject",
            "Same SOP Instance UID with different content: `reject` (keep the first copy, "
            "answer C-STORE failure 0xC0D1) or `overwrite` (replace it). Identical resends "
            "always succeed. See docs/adr/0002-duplicates.md."),
    Setting("PACS_DICOM_WORKERS", "0",
            "Number of DICOM service processes sharing the port (each new association goes to "
            "the one with fewest open); `0`: one per CPU core. pynetdicom decodes PDUs in "
            "Python, so one process is bound to one core (see docs/performance.md)."),
    Setting("PACS_MAX_PDU", "131072", "Maximum PDU size we receive (bytes; 0: unlimited)."),
    Setting("PACS_MAX_ASSOCIATIONS", "32", "Maximum concurrent associations per process."),
    Setting("PACS_MAX_OBJECT_SIZE", "4294967296",
            "Largest object accepted (bytes); bigger ones are refused."),
    Setting("PACS_DIMSE_TIMEOUT", "60", "Seconds to wait for a DIMSE message."),
    Setting("PACS_NETWORK_TIMEOUT", "60", "Seconds of network inactivity before an abort."),
    Setting("PACS_PRECOMPUTE_METADATA", "true",
            "Build each new instance's DICOM JSON metadata in a background thread after the "
            "store is acknowledged (fast first WADO-RS metadata); `false`: on first request."),
    Setting("PACS_CORS_ORIGINS", "(empty)",
            "Web origins allowed to call the HTTP API from a browser (e.g. an OHIF viewer on "
            "another host): comma-separated, `*` for any. Authorization headers are allowed."),
    Setting("PACS_LOG_LEVEL", "INFO", "Logging level (DEBUG, INFO, WARNING, ERROR)."),
)


@dataclass(frozen=True)
class Settings:
    """Every setting of the archive. Build with :func:`load_settings` or directly in tests."""

    data_dir: Path = Path("./pacs-data")
    ae_title: str = "MINIPACS"
    dicom_host: str = "0.0.0.0"
    dicom_port: int = 11112
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    database_url: str = ""
    storage_url: str = ""
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = field(default="", repr=False)
    s3_region: str = ""
    s3_secure: bool = False
    s3_spool: bool = True
    s3_upload_workers: int = 4
    s3_upload_defer: float = 0.0
    remote_aes: tuple[RemoteAE, ...] = ()
    require_known_aes: bool = False
    duplicate_policy: str = "reject"
    dicom_workers: int = 0
    max_pdu: int = 131072
    max_associations: int = 32
    max_object_size: int = 4 * 1024**3
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    cors_origins: tuple[str, ...] = ()
    precompute_metadata: bool = True
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not self.database_url:
            object.__setattr__(
                self, "database_url", f"sqlite:///{(self.data_dir / 'index.db').resolve()}"
            )
        if not self.storage_url:
            object.__setattr__(
                self, "storage_url", f"file://{(self.data_dir / 'objects').resolve()}"
            )
        if not 1 <= len(self.ae_title.strip()) <= 16:
            raise ConfigError(f"PACS_AE_TITLE must be 1-16 characters, got {self.ae_title!r}")
        if self.duplicate_policy not in ("reject", "overwrite"):
            raise ConfigError(
                f"PACS_DUPLICATE_POLICY must be 'reject' or 'overwrite', "
                f"got {self.duplicate_policy!r}"
            )
        if self.s3_upload_defer < 0:
            raise ConfigError("PACS_S3_UPLOAD_DEFER must be 0 (upload at once) or more seconds")
        if self.dicom_workers < 0:
            raise ConfigError("PACS_DICOM_WORKERS must be 0 (one per CPU core) or more")

    def dicom_process_count(self) -> int:
        """DICOM service processes to run: ``dicom_workers``, or one per CPU core when 0."""
        if self.dicom_workers:
            return self.dicom_workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)

    def remote_ae(self, ae_title: str) -> RemoteAE | None:
        """The configured peer with this AE title, if any."""
        for ae in self.remote_aes:
            if ae.ae_title == ae_title.strip():
                return ae
        return None


def parse_remote_aes(text: str) -> tuple[RemoteAE, ...]:
    """Parse ``AET@host:port,AET2@host:port`` (whitespace tolerated)."""
    out: list[RemoteAE] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            aet, _, hostport = item.partition("@")
            host, _, port = hostport.rpartition(":")
            remote = RemoteAE(aet.strip(), host.strip(), int(port))
        except ValueError:
            remote = None
        if (remote is None or not remote.ae_title or len(remote.ae_title) > 16
                or not remote.host or not 0 < remote.port < 65536):
            raise ConfigError(f"PACS_REMOTE_AES: expected AET@host:port, got {item!r}")
        out.append(remote)
    return tuple(out)


def _convert(name: str, raw: object) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    text = str(raw).strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        if kind == "Path":
            return Path(text)
        if name == "cors_origins":
            items = raw.split(",") if isinstance(raw, str) else list(raw)  # type: ignore[arg-type]
            return tuple(i.strip() for i in items if str(i).strip())
        if name == "remote_aes":
            return parse_remote_aes(text) if isinstance(raw, str) else parse_remote_aes(
                ",".join(str(x) for x in raw)  # type: ignore[attr-defined]
            )
    except ValueError:
        raise ConfigError(f"PACS_{name.upper()}: invalid value {text!r} ({kind})") from None
    return text


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from an optional TOML file, then ``PACS_*`` variables, then ``overrides``."""
    env = os.environ if environ is None else environ
    names = {f.name for f in fields(Settings)}
    values: dict[str, object] = {}
    config_file = env.get("PACS_CONFIG_FILE")
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"PACS_CONFIG_FILE {config_file}: {exc}") from None
        for key, raw in data.items():
            if key not in names:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            values[key] = _convert(key, raw)
    for name in names:
        raw = env.get(f"PACS_{name.upper()}")
        if raw is not None:
            values[name] = _convert(name, raw)
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]
