/* HistomicsUI extension of the Nucleus Analysis (built by `girder build`).
 *
 * Adds a "Nuclei" panel to HistomicsUI's slide view (right-hand panel group): one row per
 * class with its colour, its nucleus count and a show/hide checkbox (each class is its own
 * annotation document, so hiding a class is HistomicsUI's own annotation toggle), the number of
 * nucleus outlines actually drawn by GeoJS, and links to the feature table (CSV, Parquet).
 * Numbers Metadata Plot's requests (plotRequests.js).
 */
import {registerPluginNamespace} from '@girder/core/pluginUtils';
import {wrap} from '@girder/core/utilities/PluginUtils';
import ImageView from '@girder/histomicsui/views/body/ImageView';

import * as nucleusAnalysis from './index';
import NucleusLegend from './NucleusLegend';
import numberPlotRequests from './plotRequests';

registerPluginNamespace('nucleus_analysis', nucleusAnalysis);
numberPlotRequests($);

wrap(ImageView, 'render', function (render) {
    render.call(this);
    if (!this.model || !this.model.id) {
        return this;
    }
    let panel = this.$('#h-nucleus-legend-panel');
    if (!panel.length) {
        panel = $('<div id="h-nucleus-legend-panel" class="s-panel h-nucleus-legend"></div>');
        const selector = this.$('#h-annotation-panel');
        if (selector.length) {
            selector.before(panel);
        } else {
            this.$('#h-annotation-selector-container').append(panel);
        }
    }
    if (!this._nucleusLegend) {
        this._nucleusLegend = new NucleusLegend({parentView: this, imageView: this});
    }
    this._nucleusLegend.setElement(panel).setItem(this.model);
    return this;
});
