import _ from 'underscore';

import Panel from '@girder/slicer_cli_web/views/Panel';
import eventStream from '@girder/core/utilities/EventStream';
import {getApiRoot, restRequest} from '@girder/core/rest';

const JOB_TYPE = 'nucleus_analysis';
const JOB_SUCCESS = 3;
const PREVIEW_BYTES = 65536;
const PREVIEW_ROWS = 10;

const STYLE = `
.h-nucleus-legend .h-nl-status { font-size: 11px; color: #a60; }
.h-nucleus-legend .h-nl-model { color: #777; font-size: 11px; }
.h-nucleus-legend .h-nl-scope { color: #777; font-size: 11px; margin: 2px 0 4px; }
.h-nucleus-legend .h-nl-row { display: flex; align-items: center; gap: 6px; margin: 2px 0; }
.h-nucleus-legend .h-nl-swatch { width: 12px; height: 12px; border: 2px solid; display: inline-block; }
.h-nucleus-legend .h-nl-count { margin-left: auto; font-variant-numeric: tabular-nums; }
.h-nucleus-legend .h-nl-drawn, .h-nucleus-legend .h-nl-files { font-size: 11px; margin-top: 4px; }
.h-nucleus-legend .h-nl-preview { max-height: 240px; overflow: auto; font-size: 10px; }
.h-nucleus-legend .h-nl-preview table { border-collapse: collapse; }
.h-nucleus-legend .h-nl-preview td, .h-nucleus-legend .h-nl-preview th { border: 1px solid #ddd; padding: 1px 3px; white-space: nowrap; }
`;

/* Everything shown here comes from item metadata, which anyone with write access on the item
 * can set to anything (PUT item/{id}/metadata): numbers are coerced, colours and ids checked
 * against their formats, and every string is escaped before it becomes HTML. */
const COLOR_RE = /^(rgb\(\s*\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}\s*\)|#[0-9a-fA-F]{3,8})$/;
const ID_RE = /^[0-9a-fA-F]{24}$/;

function count(value) {
    const n = Number(value);
    return Number.isFinite(n) && n >= 0 ? Math.floor(n) : 0;
}

function color(value) {
    return typeof value === 'string' && COLOR_RE.test(value.trim()) ? value.trim() : '#000';
}

function text(value) {
    return _.escape(typeof value === 'string' || typeof value === 'number' ? String(value) : '');
}

function id(value) {
    return typeof value === 'string' && ID_RE.test(value) ? value : '';
}

/** The summary as the panel may use it: only well-formed values survive. */
function sanitize(summary) {
    if (!summary || !Array.isArray(summary.classes)) {
        return null;
    }
    const classes = summary.classes.filter((c) => c && typeof c === 'object').map((c) => ({
        name: typeof c.name === 'string' ? c.name : '?',
        count: count(c.count),
        color: color(c.color),
        annotationId: id(c.annotationId)
    }));
    const files = (Array.isArray(summary.files) ? summary.files : [])
        .filter((f) => f && id(f._id) && typeof f.name === 'string')
        .map((f) => ({_id: id(f._id), name: f.name}));
    return {
        nuclei: count(summary.nuclei),
        model: summary.model,
        modelVersion: summary.modelVersion,
        classScope: summary.classScope,
        classes,
        files
    };
}

function ensureStyle() {
    if (!document.getElementById('h-nucleus-legend-style')) {
        $('<style id="h-nucleus-legend-style"></style>').text(STYLE).appendTo('head');
    }
}

/**
 * The "Nuclei" panel: a collapsible HistomicsUI panel (slicer_cli_web's Panel, as the other
 * panels of the slide view) with the legend of classes and their counts, per-class show/hide,
 * how many outlines are drawn of how many shown (and whether they are still loading), and the
 * feature table of the last Nucleus Analysis of the slide.
 */
const NucleusLegend = Panel.extend({
    events: _.extend({}, Panel.prototype.events, {
        'change .h-nl-toggle': '_toggleClass',
        'click .h-nl-show-all': '_showAll',
        'click .h-nl-preview-toggle': '_togglePreview',
        'shown.bs.collapse': '_remember',
        'hidden.bs.collapse': '_remember'
    }),

    initialize(settings) {
        this.imageView = settings.imageView;
        this.summary = null;
        this._drawn = 0;
        this._preview = null;
        ensureStyle();
        this.listenTo(eventStream, 'g:event.job_status', this._onJob);
        this.listenTo(this.imageView.annotations, 'sync reset update change:displayed', this._syncToggles);
        this._timer = window.setInterval(() => this._countDrawn(), 1000);
    },

    destroy() {
        window.clearInterval(this._timer);
        Panel.prototype.destroy.apply(this, arguments);
    },

    _remember() {
        this._collapsed = !this.$('.s-panel-content').hasClass('in');
    },

    /* The panel frame of HistomicsUI's panels: a title bar that collapses the content. */
    _frame(title, content) {
        const collapsed = !!this._collapsed;
        this.$el.html(
            '<div class="s-panel-title-container">' +
            `<span class="s-panel-title h-panel-title"><span class="icon-circle-empty"></span> ${title}</span>` +
            `<span class="s-panel-controls"><i class="${collapsed ? 'icon-down-open' : 'icon-up-open'}"></i></span></div>` +
            `<div class="s-panel-content collapse${collapsed ? '' : ' in'}">${content}</div>`);
        this.$('.s-panel-content').collapse({toggle: false});
    },

    setItem(item) {
        if (!this.item || this.item.id !== item.id) {
            this.item = item;
            this.summary = null;
            this._preview = null;
            this.fetch();
        } else {
            this.render();
        }
        return this;
    },

    fetch() {
        const itemId = this.item.id;
        return restRequest({url: `nucleus_analysis/item/${itemId}`, error: null}).done((summary) => {
            if (this.item && this.item.id === itemId) {
                this.summary = sanitize(summary);
                this.render();
            }
        }).fail(() => {
            this.summary = null;
            this.render();
        });
    },

    _annotation(id) {
        return this.imageView.annotations ? this.imageView.annotations.get(id) : null;
    },

    render() {
        if (!this.summary) {
            this._frame('Nuclei',
                '<div class="h-nl-empty">No nucleus analysis yet: Analyses &rarr; Nuclei &rarr; Nucleus Analysis.</div>');
            this.$el.attr('data-nuclei', 0);
            return this;
        }
        const s = this.summary;
        const rows = s.classes.map((c) => {
            const annotation = this._annotation(c.annotationId);
            const shown = annotation ? !!annotation.get('displayed') : false;
            return `<label class="h-nl-row" data-class="${text(c.name)}" data-count="${c.count}">` +
                `<input type="checkbox" class="h-nl-toggle" data-annotation-id="${c.annotationId}"${shown ? ' checked' : ''}>` +
                `<span class="h-nl-swatch" style="border-color: ${text(c.color)}"></span>` +
                `<span class="h-nl-name">${text(c.name)}</span>` +
                `<span class="h-nl-count">${c.count.toLocaleString()}</span></label>`;
        }).join('');
        const files = s.files.map((f) => {
            const kind = f.name.split('.').pop().toUpperCase();
            return `<a class="h-nl-file" data-kind="${text(kind)}" href="${text(getApiRoot())}/file/${f._id}/download" ` +
                `title="${text(f.name)}" download>${text(kind)}</a>`;
        }).join(' &middot; ');
        this.$el.attr('data-nuclei', s.nuclei);
        this._frame(`Nuclei <span class="h-nl-total">${s.nuclei.toLocaleString()}</span>`,
            `<div class="h-nl-model">${text(s.model)} ${text(s.modelVersion)}</div>` +
            `<div class="h-nl-classes">${rows}</div>` +
            (s.classScope ? `<div class="h-nl-scope">${text(s.classScope)}</div>` : '') +
            '<div class="h-nl-drawn">Outlines drawn: <span class="h-nl-drawn-count" data-drawn-count="0">0</span>' +
            ' of <span class="h-nl-shown-count" data-shown-count="0">0</span> shown ' +
            '<span class="h-nl-status" data-loading="false"></span> ' +
            '<a class="h-nl-show-all" href="#">show all</a></div>' +
            (files ? `<div class="h-nl-files">Feature table: ${files} &middot; <a class="h-nl-preview-toggle" href="#">preview</a></div>` : '') +
            '<div class="h-nl-preview"></div>');
        this._countDrawn();
        this._renderPreview();
        return this;
    },

    _syncToggles() {
        this.$('.h-nl-toggle').each((idx, el) => {
            const annotation = this._annotation($(el).attr('data-annotation-id'));
            $(el).prop('checked', annotation ? !!annotation.get('displayed') : false);
        });
    },

    _toggleClass(evt) {
        const annotation = this._annotation($(evt.currentTarget).attr('data-annotation-id'));
        if (annotation) {
            annotation.set('displayed', $(evt.currentTarget).is(':checked'));
        }
    },

    _showAll(evt) {
        evt.preventDefault();
        (this.summary ? this.summary.classes : []).forEach((c) => {
            const annotation = this._annotation(c.annotationId);
            if (annotation) {
                annotation.set('displayed', true);
            }
        });
        this._syncToggles();
    },

    /* Outlines GeoJS actually holds for our annotations (polygons, or centroids when the
     * viewer shows a large annotation as points). */
    _countDrawn() {
        const viewer = this.imageView.viewerWidget;
        let drawn = 0;
        let shown = 0;
        let loading = false;
        if (this.summary) {
            this.summary.classes.forEach((c) => {
                const annotation = this._annotation(c.annotationId);
                if (!annotation || !annotation.get('displayed')) {
                    return;
                }
                shown += c.count;
                loading = loading || !!annotation._inFetch;
                const entry = viewer && viewer._annotations ? viewer._annotations[c.annotationId] : null;
                if (entry) {
                    (entry.features || []).forEach((feature) => {
                        drawn += (feature.data() || []).length;
                    });
                } else {
                    loading = true;
                }
            });
        }
        this._drawn = drawn;
        this.$('.h-nl-drawn-count').attr('data-drawn-count', drawn).text(drawn.toLocaleString());
        this.$('.h-nl-shown-count').attr('data-shown-count', shown).text(shown.toLocaleString());
        this.$('.h-nl-status').attr('data-loading', loading ? 'true' : 'false')
            .text(loading ? '(loading\u2026)' : (drawn < shown ? '(the viewer draws the outlines in view)' : ''));
        // HistomicsUI swaps its annotation collection when an image opens, so the listener of
        // initialize() may watch an old one: keep the checkboxes true to what is displayed
        this._syncToggles();
    },

    _togglePreview(evt) {
        evt.preventDefault();
        if (this._preview) {
            this._preview = null;
            this._renderPreview();
            return;
        }
        const csv = (this.summary.files || []).find((f) => f.name.endsWith('.csv'));
        if (!csv) {
            return;
        }
        restRequest({
            url: `file/${csv._id}/download`, data: {offset: 0, endByte: PREVIEW_BYTES}, dataType: 'text'
        }).done((text) => {
            const lines = text.split('\n').filter((l) => l.length).slice(0, PREVIEW_ROWS + 1);
            this._preview = lines.map((l) => l.split(','));
            this._renderPreview();
        });
    },

    _renderPreview() {
        const target = this.$('.h-nl-preview');
        if (!this._preview) {
            target.empty();
            return;
        }
        const [head, ...body] = this._preview;
        target.html('<table><thead><tr>' + head.map((h) => `<th>${_.escape(h)}</th>`).join('') +
            '</tr></thead><tbody>' + body.map((r) => '<tr>' + r.map((v) => `<td>${_.escape(v)}</td>`).join('') + '</tr>').join('') +
            '</tbody></table>');
    },

    _onJob(evt) {
        const job = evt.data || {};
        if (job.type === JOB_TYPE && job.status === JOB_SUCCESS && this.item) {
            this.fetch();
        }
    }
});

export default NucleusLegend;
