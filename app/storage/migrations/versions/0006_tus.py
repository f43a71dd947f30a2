"""The resumable front doors: protocol records (tus metadata, concatenation) and the
per-upload writer lease.

Revision ID: 0006_tus
Revises: 0005_replicas
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_tus"
down_revision: str | None = "0005_replicas"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resumable_uploads",
        sa.Column(
            "session_id",
            sa.String(36),
            sa.ForeignKey("upload_sessions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("metadata", sa.String(4096)),
        sa.Column("concat", sa.String(16)),
    )
    # The writer lease of an appending request is the session's `append` lease in
    # `session_leases` (0005); a waiting request flags that it wants it.
    op.add_column(
        "session_leases",
        sa.Column("release_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("session_leases", "release_requested")
    op.drop_table("resumable_uploads")
