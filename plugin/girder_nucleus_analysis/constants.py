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


class PluginSettings:
    """Setting keys of this plugin."""

    #: register (or refresh) the CLI item at server start (default true)
    AUTO_REGISTER = "nucleus_analysis.auto_register"
