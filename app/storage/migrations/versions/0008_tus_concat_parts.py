"""A tus final upload's partial uploads, so HEAD can answer them in `Upload-Concat`.

Revision ID: 0008_tus_concat_parts
Revises: 0007_part_hash_state
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_tus_concat_parts"
down_revision: str | None = "0007_part_hash_state"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL on final uploads created before: their HEAD answers `Upload-Concat: final`
    # without URLs, as it cannot name them.
    op.add_column("resumable_uploads", sa.Column("concat_parts", sa.Text))


def downgrade() -> None:
    op.drop_column("resumable_uploads", "concat_parts")
