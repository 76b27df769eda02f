"""Hostile input for the HTTP API, planned from its own ``/openapi.json`` (issue 5).

Theory of operation
-------------------
``fuzz_api`` reads the gateway's ``/openapi.json`` and fuzzes every operation it
describes, over real HTTP, in four steps:

1. **Set-up.** Learn both accounts' ids (``getCredits``), note the jobs and credit
   entries they already have, and open one job per model for each account, so that
   real job ids of both accounts exist to aim at.
2. **Plan.** Every request is made up front by ``plan_requests``: Hypothesis strategies
   drawn from the document's JSON Schemas (``loadtests.chaos.fuzz_schema``: requests that
   follow the schema, and requests with one part of the wrong type), and one
   ``random.Random(seed)`` for the hand-written hostile cases. The plan depends only on
   the document, the ids of step 1, the seed and the budget; secrets appear in it as
   placeholders (``<api_key>``, ``<admin_token:chopped>``) filled in at send time, so a
   request can be shown in a report as it is.
3. **Send and judge.** One request at a time (the requests of a ``group`` at once). Each
   answer is judged on its own against the request's ``Expect``: any 5xx or no answer at
   all; a 2xx that must not happen (bad credentials, no admin token, a request the
   document calls invalid); another account's job not answered 404; another account's
   ids in an answer; an Idempotency-Key that does not give the same job back.
4. **Audit** after each category, through the API: every job and credit entry the two
   accounts gained since step 1 must come from a request answered 2xx. A job, hold or
   grant without one is money moved by a rejected request.

The two accounts must not be used by anyone else while the fuzzer runs. Hypothesis
(a dev dependency) is imported only when a plan is made, so ``jobline`` installs without
it; asking for a fuzz run without it says what to install.

Modules: ``model`` (requests, problems, the report), ``document`` (the operations and
the arbiter of validity), ``plan`` and ``corpora`` (what is sent), ``run`` (sending,
judging, auditing; ``fuzz_api``).
"""

from loadtests.chaos.fuzz.model import CATEGORIES, Expect, FuzzReport, FuzzRequest, Problem
from loadtests.chaos.fuzz.plan import Known, plan_requests
from loadtests.chaos.fuzz.run import all_requests, fuzz_api

__all__ = [
    "CATEGORIES",
    "Expect",
    "FuzzReport",
    "FuzzRequest",
    "Known",
    "Problem",
    "all_requests",
    "fuzz_api",
    "plan_requests",
]
