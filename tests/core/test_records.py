"""The one representative rule every stage applies (thresher.records.representative_mask)."""

import pandas as pd
import pyarrow as pa
import pytest

from thresher.records import representative_mask

TABLE = pa.table(
    {
        "id": ["a", "b", "c", "d"],
        "is_representative": pa.chunked_array([[True, None], [False, False]]),
    }
)


@pytest.mark.parametrize(
    "table",
    [TABLE, TABLE.combine_chunks().to_batches()[0], TABLE.to_pandas()],
    ids=["arrow-table", "record-batch", "pandas"],
)
def test_nulls_count_as_representatives_and_false_rows_do_not(table):
    assert representative_mask(table).tolist() == [True, True, False, False]


def test_without_dedup_output_every_row_is_a_representative():
    assert representative_mask(pa.table({"id": ["a", "b"]})).tolist() == [True, True]
    assert representative_mask(pd.DataFrame({"id": []})).tolist() == []
