"""Video frames judged on faces: verdict_frames.faces keeps each frame's judged faces.

A JSON list of ``{"box": [x, y, w, h], "score", "fake_score"}`` (boxes in pixels of the frame as
decoded), null for a frame judged whole. Existing rows are frames judged whole (null).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("verdict_frames") as batch:
        batch.add_column(
            sa.Column(
                "faces",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("verdict_frames") as batch:
        batch.drop_column("faces")
