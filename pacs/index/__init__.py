"""The SQL index (SQLAlchemy 2): patients, studies, series, instances, and their matching."""
