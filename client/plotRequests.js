/* Metadata Plot's requests, numbered in the order this page sends them.
 *
 * HistomicsUI's Metadata Plot sends `plot/list` and `plot/data` with one uuid per page, and
 * large_image cancels the running request of a uuid when another one arrives. The page aborts
 * its previous request before it sends the next, but a busy server can receive the aborted
 * one last, which then cut the live one short (a column list without the feature table's
 * columns). Each such request carries `seq`, this page's count of them per route; the plugin
 * (plugin/girder_nucleus_analysis/plot_requests.py) lets a request cancel only older ones. */
const PLOT = /\/annotation\/item\/[^/?]+\/plot\/(list|data)(\?|$)/;
const sent = {};

export default function numberPlotRequests(jq) {
    jq.ajaxPrefilter((options) => {
        const match = PLOT.exec(options.url || '');
        if (!match || String(options.type || '').toUpperCase() !== 'POST' ||
                typeof options.data !== 'string') {
            return;
        }
        sent[match[1]] = (sent[match[1]] || 0) + 1;
        options.data += `${options.data ? '&' : ''}seq=${sent[match[1]]}`;
    });
}
