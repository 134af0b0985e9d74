import _ from 'underscore';

import Panel from '@girder/slicer_cli_web/views/Panel';
import eventStream from '@girder/core/utilities/EventStream';
import {getApiRoot, restRequest} from '@girder/core/rest';

const JOB_TYPE = 'nucleus_analysis';
const JOB_SUCCESS = 3;
const PREVIEW_BYTES = 65536;
const PREVIEW_ROWS = 10;
/* the plugin's constants.DETAIL_LIMIT, when the summary does not say */
const DETAIL_LIMIT = 10000;
/* large_image 1.35's PlottableItemData.maxAnnotationElements: Metadata Plot reads no element
 * of a larger annotation, so its table rows join no nucleus (docs/DESIGN.md section 5) */
const PLOT_ELEMENT_LIMIT = 25000;
/* a failed annotation fetch is tried again this many times (large_image never does) */
const FETCH_RETRIES = 3;
/* large_image's default minElements: above it an outline annotation is fetched by region */
const PAGE_ABOVE = 5000;
/* the region fetched around the view, in views per side (large_image's default is 3) */
const VIEW_AREA = 1.5;

const STYLE = `
.h-nucleus-legend .h-nl-status { font-size: 11px; color: #a60; }
.h-nucleus-legend .h-nl-model { color: #777; font-size: 11px; }
.h-nucleus-legend .h-nl-scope { color: #777; font-size: 11px; margin: 2px 0 4px; }
.h-nucleus-legend .h-nl-row { display: flex; align-items: center; gap: 6px; margin: 2px 0; }
.h-nucleus-legend .h-nl-swatch { width: 12px; height: 12px; border: 2px solid; display: inline-block; }
.h-nucleus-legend .h-nl-count { margin-left: auto; font-variant-numeric: tabular-nums; }
.h-nucleus-legend .h-nl-drawn, .h-nucleus-legend .h-nl-files, .h-nucleus-legend .h-nl-actions,
.h-nucleus-legend .h-nl-selected { font-size: 11px; margin-top: 4px; }
.h-nucleus-legend .h-nl-plot-note { color: #777; font-size: 11px; margin-top: 4px; }
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

/** How the network was run: the job's test-time averaging and grid anchor, if any
 * (parameters set to true). */
function averaging(parameters) {
    const p = parameters && typeof parameters === 'object' ? parameters : {};
    const on = [['test_time_flips', 'flips'], ['test_time_shifts', 'shifts']]
        .filter(([key]) => p[key] === true).map(([, name]) => name);
    const parts = on.length ? [`averaged over test-time ${on.join(' + ')}`] : [];
    if (p.grid_anchor === true) {
        parts.push('grid anchored to the tissue');
    }
    return parts.join(', ');
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
        annotationId: id(c.annotationId),
        densityAnnotationId: id(c.densityAnnotationId)
    }));
    const files = (Array.isArray(summary.files) ? summary.files : [])
        .filter((f) => f && id(f._id) && typeof f.name === 'string')
        .map((f) => ({_id: id(f._id), name: f.name}));
    return {
        nuclei: count(summary.nuclei),
        detailLimit: count(summary.detailLimit) || DETAIL_LIMIT,
        model: summary.model,
        modelVersion: summary.modelVersion,
        classScope: summary.classScope,
        averaging: averaging(summary.parameters),
        classes,
        files
    };
}

/** A density element as the panel uses it: a grid of finite non-negative counts, or null. */
function grid(element) {
    if (!element || element.type !== 'griddata' || !Array.isArray(element.values)) {
        return null;
    }
    const width = count(element.gridWidth);
    const dx = Number(element.dx);
    const dy = Number(element.dy);
    const origin = Array.isArray(element.origin) ? element.origin.map(Number) : [0, 0];
    if (!width || !(dx > 0) || !(dy > 0) || !origin.slice(0, 2).every(Number.isFinite)) {
        return null;
    }
    return {width, dx, dy, x0: origin[0], y0: origin[1], values: Float64Array.from(element.values, count)};
}

/** Nuclei a grid counts in cells whose centre lies in ``bounds`` (base pixels). */
function inBounds(g, bounds) {
    const left = Math.min(bounds.left, bounds.right);
    const right = Math.max(bounds.left, bounds.right);
    const top = Math.min(bounds.top, bounds.bottom);
    const bottom = Math.max(bounds.top, bounds.bottom);
    const rows = Math.ceil(g.values.length / g.width);
    const i0 = Math.max(0, Math.ceil((left - g.x0 - g.dx / 2) / g.dx));
    const i1 = Math.min(g.width - 1, Math.floor((right - g.x0 + g.dx / 2) / g.dx));
    const j0 = Math.max(0, Math.ceil((top - g.y0 - g.dy / 2) / g.dy));
    const j1 = Math.min(rows - 1, Math.floor((bottom - g.y0 + g.dy / 2) / g.dy));
    let n = 0;
    for (let j = j0; j <= j1; j += 1) {
        for (let i = i0; i <= i1; i += 1) {
            n += g.values[j * g.width + i] || 0;
        }
    }
    return n;
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
 *
 * Level of detail, for results with density annotations (more than ``detailLimit`` nuclei):
 * while the view holds more than ``detailLimit`` nuclei of the shown classes (counted on the
 * density grids), the panel shows each class's density heatmap (one small annotation per
 * class, every nucleus counted) and hides its outlines; below that it hides the heatmaps and
 * shows the outlines, fetched by region (large_image's paging, preset so that the viewer never
 * fetches every centroid of a large class). The class checkboxes act on both.
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
        this._wanted = {};
        this._grids = {};
        this._applied = null;
        this._mode = 'detail';
        this._retries = {};
        this._regionRetries = {};
        this._lost = {};
        ensureStyle();
        this.listenTo(eventStream, 'g:event.job_status', this._onJob);
        this.listenTo(this.imageView.annotations, 'sync reset update change:displayed', this._syncToggles);
        this._timer = window.setInterval(() => this._tick(), 500);
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
            this._wanted = {};
            this._grids = {};
            this._applied = null;
            this._retries = {};
            this._regionRetries = {};
            this._lost = {};
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
                this._applied = null;
                this._fetchGrids(itemId);
                this.render();
            }
        }).fail(() => {
            this.summary = null;
            this.render();
        });
    },

    /* The density grids of the classes (small: at most 256 x 256 counts each). */
    _fetchGrids(itemId) {
        (this.summary ? this.summary.classes : []).forEach((c) => {
            if (!c.densityAnnotationId || this._grids[c.name]) {
                return;
            }
            restRequest({url: `annotation/${c.densityAnnotationId}`, error: null}).done((resp) => {
                if (this.item && this.item.id === itemId) {
                    const elements = ((resp || {}).annotation || {}).elements || [];
                    this._grids[c.name] = grid(elements[0]);
                }
            });
        });
    },

    _hasDensity() {
        return !!this.summary && this.summary.classes.some((c) => c.densityAnnotationId);
    },

    /* Nuclei of the shown classes in the current view: from the grids, else the class's
     * count times the fraction of the slide in view. */
    _inView(bounds) {
        const map = this.imageView.viewerWidget;
        const sizeX = (map && map.sizeX) || 1;
        const sizeY = (map && map.sizeY) || 1;
        const area = Math.abs((bounds.right - bounds.left) * (bounds.bottom - bounds.top));
        const fraction = Math.min(1, area / (sizeX * sizeY));
        let n = 0;
        this.summary.classes.forEach((c) => {
            if (this._wanted[c.name] === false) {
                return;
            }
            const g = this._grids[c.name];
            n += g ? inBounds(g, bounds) : c.count * fraction;
        });
        return n;
    },

    _bounds() {
        const widget = this.imageView.viewerWidget;
        const map = widget && widget.viewer;
        return map && map.bounds ? map.bounds() : null;
    },

    /* Every half second: which level of detail the view needs, applied when it changes. */
    _tick() {
        if (this.summary) {
            this._levelOfDetail();
        }
        this._retryFailed();
        this._countDrawn();
        this._showSelection();
    },

    /* A failed fetch is never tried again (large_image, HistomicsUI): after a dropped
     * connection or a busy server's error the layer would stay undrawn, and nothing would say
     * so. HistomicsUI marks an annotation 'loading' before it fetches and clears the mark only
     * when the fetch succeeds, so loading while no fetch is under way means it failed: show
     * the annotation anew (HistomicsUI fetches it again), at most FETCH_RETRIES times, waiting
     * a little longer each time.
     * HistomicsUI also ignores an annotation shown while its viewer is being made (no fetch,
     * no draw, never marked loading): one displayed, idle and still not in the viewer a
     * second after the viewer exists is shown anew the same way (at most FETCH_RETRIES
     * times, then the panel says a layer could not be loaded). */
    _retryFailed() {
        const now = Date.now();
        this._gaveUp = false;
        const widget = this.imageView.viewerWidget;
        const inViewer = widget && widget.viewer && widget._annotations ? widget._annotations : null;
        (this.summary ? this.summary.classes : []).forEach((c) => {
            [c.annotationId, c.densityAnnotationId].forEach((annotationId) => {
                const annotation = annotationId ? this._annotation(annotationId) : null;
                if (annotation && inViewer && annotation.get('displayed') && !annotation.get('loading') &&
                        !annotation._inFetch && !inViewer[annotationId]) {
                    const lost = this._lost[annotationId] || {since: now, tries: 0};
                    this._lost[annotationId] = lost;
                    if (now - lost.since < 1000) {
                        return;
                    }
                    if (lost.tries >= FETCH_RETRIES) {
                        this._gaveUp = true; // say so, instead of 'loading' for ever
                        return;
                    }
                    lost.tries += 1;
                    lost.since = now;
                    annotation.set('displayed', false);
                    annotation.set('displayed', true);
                    return;
                }
                delete this._lost[annotationId];
                if (!annotation || !annotation.get('displayed') || !annotation.get('loading') || annotation._inFetch) {
                    return;
                }
                const retry = this._retries[annotationId] || {tries: 0, at: 0};
                if (retry.tries >= FETCH_RETRIES) {
                    this._gaveUp = true;
                    return;
                }
                if (now < retry.at) {
                    return;
                }
                retry.tries += 1;
                retry.at = now + 2000 * retry.tries;
                this._retries[annotationId] = retry;
                annotation.set('displayed', false);
                annotation.set('displayed', true);
            });
            this._retryRegion(c.annotationId, now);
        });
    },

    /* A large class's outlines are fetched again for every view it is panned or zoomed to
     * (large_image's paging); when such a fetch fails large_image leaves that part of the
     * view undrawn until the view moves far enough, and the annotation is not marked loading.
     * The panel watches each outline annotation's fetch errors and fetches its current region
     * again, at most FETCH_RETRIES times in a row, waiting a little longer each time. */
    _retryRegion(annotationId, now) {
        const annotation = annotationId ? this._annotation(annotationId) : null;
        if (!annotation) {
            return;
        }
        if (annotation._nlWatched !== this) {
            annotation._nlWatched = this;
            this.listenTo(annotation, 'g:error', () => {
                if (annotation.get('displayed') && !annotation.get('loading')) {
                    const retry = this._regionRetries[annotation.id] || {tries: 0, failed: 0, at: 0};
                    retry.pending = true;
                    this._regionRetries[annotation.id] = retry;
                }
            });
            this.listenTo(annotation, 'g:fetched', () => {
                const retry = this._regionRetries[annotation.id];
                if (retry) {
                    retry.pending = false;
                    retry.failed = 0;
                }
            });
        }
        const retry = this._regionRetries[annotationId];
        if (!retry || !retry.pending) {
            return;
        }
        if (!annotation.get('displayed')) {
            retry.pending = false;
            return;
        }
        if (retry.failed >= FETCH_RETRIES) {
            this._gaveUp = true;
            return;
        }
        if (annotation._inFetch || now < retry.at) {
            return;
        }
        retry.failed += 1;
        retry.tries += 1;
        retry.at = now + 2000 * retry.failed;
        retry.pending = false;
        annotation.fetch({ignoreError: true});
    },

    /* The nuclei selected in the viewer (clicked, or points picked in Metadata Plot): their
     * ids and classes, so a selection can be read and checked against the feature table. */
    _showSelection() {
        const ours = {};
        (this.summary ? this.summary.classes : []).forEach((c) => {
            ours[c.annotationId] = true;
        });
        const selected = this.imageView.selectedElements;
        const nuclei = (selected && selected.models ? selected.models : []).filter((m) =>
            m.originalAnnotation && ours[m.originalAnnotation.id]).map((m) => {
            const user = m.get('user') || {};
            return {element: id(m.id), nucleus: count(user.id), group: String(user.class || m.get('group') || '')};
        });
        const key = nuclei.map((n) => n.element).join();
        if (key === this._selectedKey) {
            return;
        }
        this._selectedKey = key;
        // .text(): set as text, never parsed as HTML
        const shown = nuclei.slice(0, 5).map((n) => `nucleus ${n.nucleus} (${n.group})`).join(', ');
        this.$('.h-nl-selected').attr('data-nucleus-ids', nuclei.map((n) => n.nucleus).join())
            .attr('data-element-ids', key)
            .text(nuclei.length ? `Selected: ${shown}${nuclei.length > 5 ? ` and ${nuclei.length - 5} more` : ''}` : '');
    },

    _levelOfDetail() {
        const s = this.summary;
        let mode = 'detail';
        const bounds = this._bounds();
        const where = bounds ? [bounds.left, bounds.top, bounds.right, bounds.bottom].join() : '';
        const moving = where !== this._lastBounds;
        this._lastBounds = where;
        if (this._hasDensity()) {
            mode = bounds && this._inView(bounds) <= s.detailLimit ? 'detail' : 'density';
            if (mode === 'detail' && this._mode === 'density' && moving && this._applied) {
                // while a zoom is under way, outlines fetched for each passing view would
                // queue up: switch to them once the view holds still (half a second)
                mode = 'density';
            }
        }
        const present = s.classes.map((c) => [
            this._annotation(c.annotationId) ? 1 : 0,
            this._annotation(c.densityAnnotationId) ? 1 : 0]).join();
        const key = `${mode}|${present}`;
        if (key === this._applied) {
            // no change of level: what the user toggled elsewhere (HistomicsUI's annotation
            // panel) becomes the panel's choice; the density layers stay hidden while the
            // outlines are shown (HistomicsUI shows them when it lists the annotations, which
            // can come after the panel applied its level)
            s.classes.forEach((c) => {
                const shown = this._annotation(mode === 'density' ? c.densityAnnotationId : c.annotationId);
                if (shown) {
                    this._wanted[c.name] = !!shown.get('displayed');
                }
                const density = this._annotation(c.densityAnnotationId);
                if (mode === 'detail' && density && density.get('displayed')) {
                    density.set('displayed', false);
                }
            });
            return;
        }
        this._applied = key;
        this._mode = mode;
        this._apply();
    },

    /* Show what the level of detail and the class choices ask for, hide the rest. */
    _apply() {
        (this.summary ? this.summary.classes : []).forEach((c) => {
            const want = this._wanted[c.name] !== false;
            const outlines = this._annotation(c.annotationId);
            const density = this._annotation(c.densityAnnotationId);
            const showOutlines = want && (this._mode === 'detail' || !density);
            if (outlines) {
                if (showOutlines && !outlines.get('displayed') &&
                        outlines._pageElements === undefined &&
                        (outlines.get('_elementCount') || 0) > PAGE_ABOVE) {
                    // fetch what is in view only (large_image's paging), never every centroid,
                    // with a margin of a quarter view on each side (large_image: one view)
                    outlines._pageElements = true;
                    outlines._viewArea = VIEW_AREA;
                }
                if (!!outlines.get('displayed') !== showOutlines) {
                    outlines.set('displayed', showOutlines);
                }
            }
            if (density) {
                const showDensity = want && this._mode === 'density';
                if (!!density.get('displayed') !== showDensity) {
                    density.set('displayed', showDensity);
                }
            }
        });
        this._syncToggles();
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
            const shown = this._wanted[c.name] !== false;
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
            `<div class="h-nl-model">${text(s.model)} ${text(s.modelVersion)}` +
            (s.averaging ? ` <span class="h-nl-averaging">(${text(s.averaging)})</span>` : '') + '</div>' +
            `<div class="h-nl-classes">${rows}</div>` +
            '<div class="h-nl-actions"><a class="h-nl-show-all" href="#">show all classes</a></div>' +
            (s.classScope ? `<div class="h-nl-scope">${text(s.classScope)}</div>` : '') +
            '<div class="h-nl-drawn">Outlines drawn: <span class="h-nl-drawn-count" data-drawn-count="0">0</span>' +
            ' of <span class="h-nl-shown-count" data-shown-count="0">0</span> shown ' +
            '<span class="h-nl-status" data-loading="false"></span></div>' +
            '<div class="h-nl-density" data-mode="detail" data-density-nuclei="0"></div>' +
            '<div class="h-nl-selected" data-nucleus-ids="" data-element-ids=""></div>' +
            '<div class="h-nl-plot-note"></div>' +
            (files ? `<div class="h-nl-files">Feature table: ${files} &middot; <a class="h-nl-preview-toggle" href="#">preview</a></div>` : '') +
            '<div class="h-nl-preview"></div>');
        const large = s.classes.filter((c) => c.count > PLOT_ELEMENT_LIMIT).map((c) => c.name);
        // .text(): class names are set as text, never parsed as HTML
        this.$('.h-nl-plot-note').attr('data-classes', large.length).text(large.length
            ? `Metadata Plot shows one point per nucleus only for shown classes of at most ${PLOT_ELEMENT_LIMIT.toLocaleString()} nuclei; ` +
              `${large.join(', ')} ${large.length > 1 ? 'have' : 'has'} more: use the Parquet table.`
            : '');
        this._countDrawn();
        this._selectedKey = null;
        this._showSelection();
        this._renderPreview();
        return this;
    },

    _syncToggles() {
        (this.summary ? this.summary.classes : []).forEach((c) => {
            this.$(`.h-nl-toggle[data-annotation-id="${c.annotationId}"]`)
                .prop('checked', this._wanted[c.name] !== false);
        });
    },

    _toggleClass(evt) {
        const annotationId = $(evt.currentTarget).attr('data-annotation-id');
        const c = (this.summary ? this.summary.classes : []).find((k) => k.annotationId === annotationId);
        if (c) {
            this._wanted[c.name] = $(evt.currentTarget).is(':checked');
            this._apply();
        }
    },

    _showAll(evt) {
        evt.preventDefault();
        (this.summary ? this.summary.classes : []).forEach((c) => {
            this._wanted[c.name] = true;
        });
        this._apply();
    },

    /* Outlines GeoJS actually holds for our annotations (polygons, or centroids when the
     * viewer shows a large annotation as points). */
    _countDrawn() {
        const viewer = this.imageView.viewerWidget;
        let drawn = 0;
        let shown = 0;
        let loading = false;
        let densityShown = 0;
        let densityDrawn = 0;
        if (this.summary) {
            this.summary.classes.forEach((c) => {
                const density = this._annotation(c.densityAnnotationId);
                if (density && density.get('displayed')) {
                    densityShown += c.count;
                    const entry = viewer && viewer._annotations ? viewer._annotations[c.densityAnnotationId] : null;
                    if (entry && (entry.features || []).length) {
                        (entry.features || []).forEach((feature) => {
                            (feature.data() || []).forEach((v) => {
                                densityDrawn += count(v);
                            });
                        });
                    } else {
                        loading = true;
                    }
                }
                const annotation = this._annotation(c.annotationId);
                const row = this.$(`.h-nl-toggle[data-annotation-id="${c.annotationId}"]`).closest('.h-nl-row');
                row.attr('data-drawn', 0);
                if (!annotation || !annotation.get('displayed')) {
                    return;
                }
                shown += c.count;
                loading = loading || !!annotation._inFetch ||
                    !!(this._regionRetries[c.annotationId] || {}).pending;
                const entry = viewer && viewer._annotations ? viewer._annotations[c.annotationId] : null;
                let classDrawn = 0;
                if (entry) {
                    (entry.features || []).forEach((feature) => {
                        classDrawn += (feature.data() || []).length;
                    });
                } else {
                    loading = true;
                }
                drawn += classDrawn;
                row.attr('data-drawn', classDrawn);
            });
        }
        this._drawn = drawn;
        const densityText = this._mode === 'density'
            ? `Whole-slide view: the density of ${densityDrawn.toLocaleString()} of ${densityShown.toLocaleString()} nuclei; zoom in to draw their outlines.`
            : '';
        this.$('.h-nl-density').attr('data-mode', this._mode).attr('data-density-nuclei', densityDrawn)
            .attr('data-density-shown', densityShown).text(densityText);
        // at whole-slide zoom no outline is drawn by design: say what is shown instead
        this.$('.h-nl-drawn').toggleClass('hidden', this._mode === 'density');
        this.$('.h-nl-drawn-count').attr('data-drawn-count', drawn).text(drawn.toLocaleString());
        this.$('.h-nl-shown-count').attr('data-shown-count', shown).text(shown.toLocaleString());
        const retries = Object.values(this._retries).concat(Object.values(this._regionRetries))
            .reduce((n, r) => n + r.tries, 0);
        const failed = !!this._gaveUp;
        this.$('.h-nl-status').attr('data-loading', loading ? 'true' : 'false')
            .attr('data-retries', retries)
            .text(failed ? '(a layer could not be loaded: reload the page)'
                : loading ? (retries ? '(loading again after a failed request\u2026)' : '(loading\u2026)')
                    : (drawn < shown ? '(the viewer draws the outlines in view)' : ''));
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
