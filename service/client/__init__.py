"""Typed Python clients of the HTTP API (httpx), returning the service's own response models.

    from service.client import MadeClient

    with MadeClient("http://127.0.0.1:8000") as made:
        print(made.models().default)
        lp = made.logprob([[0, 1, None, 1]], model="tiny")
        samples = made.sample(16, seed=0).array()  # (16, D) uint8

`AsyncMadeClient` has the same methods, awaitable: each call is defined once (its signature,
its request and how its response reads) and each client only sends it its own way. Rows may be
lists or numpy arrays (NaN for missing), sent as they are (the server refuses what is not 0, 1 or
missing); `packed=True` sends complete rows bit-packed (x_b64), much smaller for large batches.
Records of a table model are a list of dicts (JSON: a key left out or None is unknown, "NA" is
absent) or a pandas DataFrame, which goes as the CSV it stands for, so that its empty cells mean
what an empty cell of a CSV file means (absent where the column can be absent, else unknown).
`sample_records`/`impute_records(..., as_frame=True)` answer pandas DataFrames, and
`anomaly_threshold(model, contamination)` is a held-out log p quantile (PyOD's contamination).
Errors raise MadeAPIError with the server's status, type and one-sentence detail. Pass `http=`
an httpx client of your own, e.g. `httpx.AsyncClient(transport=httpx.ASGITransport(app))` to
talk to an app in-process.
"""

from service.client.calls import MadeAPIError, merge_answers
from service.client.clients import AsyncMadeClient, MadeClient
from service.client.endpoints import threshold_of

__all__ = ["AsyncMadeClient", "MadeAPIError", "MadeClient", "merge_answers", "threshold_of"]
