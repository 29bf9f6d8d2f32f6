"""The review dashboard (Streamlit). Started by ``xray-audit dashboard RUN_DIR``.

Reads only files: the run directory named by ``$XRAY_AUDIT_RUN_DIR`` (see :mod:`audit.rundir`),
optionally a reader study's ``ratings.parquet`` (``$XRAY_AUDIT_STUDY_DIR``) and a second run to
compare with (``$XRAY_AUDIT_COMPARE_RUN_DIR``). Never imports torch.
"""

from __future__ import annotations

import streamlit as st

from audit.cases import is_phantom
from dashboards import data
from reports.norberg import PHANTOM_NOTE

# Not in a folder named "pages": Streamlit would also list that folder's files (helpers included) as
# pages of their own, and a bookmarked URL would run its page without this script (no sidebar, no
# phantom banner).
PAGES = (
    ("views/leaderboard.py", "Leaderboard", ":material/leaderboard:"),
    ("views/distributions.py", "Distributions", ":material/bar_chart:"),
    ("views/gallery.py", "Case gallery", ":material/photo_library:"),
    ("views/worst_cases.py", "Worst cases", ":material/troubleshoot:"),
    ("views/privacy.py", "Privacy", ":material/privacy_tip:"),
    ("views/readers.py", "Reader scores", ":material/groups:"),
    ("views/compare.py", "Compare runs", ":material/compare_arrows:"),
)


def main() -> None:
    st.set_page_config(page_title="xray-audit dashboard", layout="wide")
    pages = [
        st.Page(path, title=title, icon=icon, default=i == 0) for i, (path, title, icon) in enumerate(PAGES)
    ]
    nav = st.navigation(pages)
    run_dir = data.env_path(data.RUN_ENV)
    if run_dir is None:
        st.error(
            f"No run directory given (${data.RUN_ENV} is unset). Start the dashboard with "
            "`xray-audit dashboard RUN_DIR`; for a demo run: `xray-audit demo --out DIR`, then "
            "`xray-audit dashboard DIR/run`."
        )
        st.stop()
    try:
        view = data.view(run_dir)
    except (FileNotFoundError, ValueError) as exc:
        st.error(str(exc))
        st.stop()
    info = view.files.info
    if is_phantom(view.files.cases):
        st.warning(f"**Phantom data.** {PHANTOM_NOTE}", icon="⚠️")
    with st.sidebar:
        st.markdown(f"**Run** `{view.run_dir.name}`")
        st.caption(str(view.run_dir))
        study = view.files.settings.name
        if study:
            st.caption(f"study: {study}")
        st.caption(
            f"{info.get('n_cases', '?')} cases · {len(view.models)} models · "
            f"{info.get('n_failures', 0)} failures · finished {info.get('finished', '?')}"
        )
    nav.run()


if __name__ == "__main__":
    main()
