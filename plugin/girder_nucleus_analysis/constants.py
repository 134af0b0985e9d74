"""Names shared by the server plugin and the worker task (no Girder imports here)."""

#: slicer CLI name, as in ``slicer_cli/slicer_cli_list.json``
CLI_NAME = "NucleusAnalysis"
#: image/tag folders the CLI is registered under (slicer_cli_web's Docker image convention);
#: ``local`` marks the CLI as run as a local process by girder_worker instead of in Docker
IMAGE_NAME = "dsa/nucleus-analysis"
IMAGE_TAG = "local"
#: Girder job type of our jobs
JOB_TYPE = "nucleus_analysis"
#: item metadata key holding the summary of the last successful run
META_KEY = "nucleusAnalysis"
#: key in annotation ``attributes`` (and on the tag folder) marking what this plugin owns
ATTR_KEY = "nucleusAnalysis"
#: a result with more nuclei than this gets per-class density annotations, and its outline
#: annotations are not shown by default: the Nuclei panel (``client/NucleusLegend.js``, same
#: number) draws the density while the view holds more nuclei than this, the outlines in view
#: below it
DETAIL_LIMIT = 10_000
#: celery task name of the worker side
TASK_NAME = "girder_nucleus_analysis.worker.run_nucleus_analysis"
#: slicer_cli_web's setting holding the folder that CLI images are registered in
TASK_FOLDER_SETTING = "slicer_cli_web.task_folder"

# Job statuses (girder_jobs + girder_worker's custom ones), duplicated so that the worker side
# needs neither package.
STATUS_RUNNING = 2
STATUS_SUCCESS = 3
STATUS_ERROR = 4
STATUS_CANCELED = 5
STATUS_CANCELING = 824


STATUS_QUEUED = 1
STATUS_INACTIVE = 0
#: statuses after which a job's data token is revoked (canceling included: a job asked to
#: stop must not read or write anything more)
TOKEN_DEAD_STATUSES = (STATUS_SUCCESS, STATUS_ERROR, STATUS_CANCELED, STATUS_CANCELING)
#: statuses of a job that has ended (the worker sends nothing after them but its last log)
ENDED_STATUSES = (STATUS_SUCCESS, STATUS_ERROR, STATUS_CANCELED)

#: environment of the girder_worker (never of a request): the deployment's endpoints, which
#: the worker hands to the CLI in its environment, never on its command line
ENV_TRITON_URL = "NUCLEUS_ANALYSIS_TRITON_URL"
ENV_TRITON_MODEL = "NUCLEUS_ANALYSIS_TRITON_MODEL"
ENV_SCHEDULER = "NUCLEUS_ANALYSIS_SCHEDULER"


class PluginSettings:
    """Setting keys of this plugin (admin only: Girder settings need an admin to change)."""

    #: register (or refresh) the CLI item at server start (default true)
    AUTO_REGISTER = "nucleus_analysis.auto_register"
    #: wall-clock seconds a job may take from submission (queue included) to its end; the
    #: job's data token expires then, and the worker stops the CLI (job ERROR)
    JOB_TIME_LIMIT_S = "nucleus_analysis.job_time_limit_s"
    #: slides declaring more base pixels than this are refused at launch (HTTP 400)
    MAX_SLIDE_PIXELS = "nucleus_analysis.max_slide_pixels"


#: defaults and allowed ranges of the numeric settings
SETTING_RANGES = {
    PluginSettings.JOB_TIME_LIMIT_S: (6 * 3600, 10, 7 * 86400),
    PluginSettings.MAX_SLIDE_PIXELS: (5e10, 1e6, 5e10),
}
