// A1111's page globals for extensions' scripts (A1111.md §15.7). Atelier puts this script inline in
// <head> before every extension's javascript/*.js, so those scripts find these names at load time.
// Behaviour is reproduced from A1111's documented behaviour; no A1111 code is used.
/* eslint-disable no-unused-vars, no-var */

var uiUpdateCallbacks = [];
var uiAfterUpdateCallbacks = [];
var uiLoadedCallbacks = [];
var uiTabChangeCallbacks = [];
var optionsChangedCallbacks = [];
var optionsAvailableCallbacks = [];
var uiAfterUpdateTimeout = null;
var uiCurrentTab = null;
// The settings in effect, as a plain object: filled from the server once the page has loaded, and
// again after Settings (or a quicksetting) are applied, firing onOptionsChanged.
var opts = {};
// Tooltips by the element's text (A1111's `titles`): extensions add entries (`titles["⇅"] = "Swap"`)
// or merge their own dictionary into it; buttons and labels whose text is a key get it as title.
var titles = {};

// The root extensions query: the <gradio-app> element (its shadow root if it has one) with
// getElementById working on it, else the document.
function gradioApp() {
    var elems = document.getElementsByTagName('gradio-app');
    var elem = elems.length ? elems[0] : document;
    if (elem !== document && !elem.getElementById) {
        elem.getElementById = function(id) {
            return document.getElementById(id);
        };
    }
    return elem.shadowRoot ? elem.shadowRoot : elem;
}

function get_uiCurrentTab() {
    return gradioApp().querySelector('#tabs > .tab-wrapper button.selected, #tabs > .tab-nav button.selected, ' +
                                     '#tabs button[role="tab"][aria-selected="true"]');
}

// The first visible tab panel (`#tab_<name>`) of the main tabs.
function get_uiCurrentTabContent() {
    var panels = gradioApp().querySelectorAll('#tabs > .tabitem[id^=tab_], #tabs .tabitem[id^=tab_]');
    for (var i = 0; i < panels.length; i++) {
        if (uiElementIsVisible(panels[i])) return panels[i];
    }
    return null;
}

function onUiUpdate(callback) {
    uiUpdateCallbacks.push(callback);
}

function onAfterUiUpdate(callback) {
    uiAfterUpdateCallbacks.push(callback);
}

// Runs once, when #txt2img_prompt exists.
function onUiLoaded(callback) {
    uiLoadedCallbacks.push(callback);
}

function onUiTabChange(callback) {
    uiTabChangeCallbacks.push(callback);
}

function onOptionsChanged(callback) {
    optionsChangedCallbacks.push(callback);
}

function onOptionsAvailable(callback) {
    if (Object.keys(opts).length !== 0) {
        callback();
        return;
    }
    optionsAvailableCallbacks.push(callback);
}

function executeCallbacks(queue, arg) {
    for (var i = 0; i < queue.length; i++) {
        try {
            queue[i](arg);
        } catch (e) {
            console.error('error running callback', queue[i], ':', e);
        }
    }
}

function uiElementIsVisible(el) {
    if (el === document) return true;
    var computedStyle = getComputedStyle(el);
    var isVisible = computedStyle.display !== 'none';
    if (!isVisible) return false;
    return el.parentNode ? uiElementIsVisible(el.parentNode) : true;
}

function uiElementInSight(el) {
    var rect = el.getBoundingClientRect();
    var windowHeight = window.innerHeight || document.documentElement.clientHeight;
    return rect.bottom > 0 && rect.top < windowHeight;
}

// Tell Gradio that a value set from JavaScript changed (a bubbling `input` event).
function updateInput(target) {
    var e = new Event('input', {bubbles: true});
    Object.defineProperty(e, 'target', {value: target});
    target.dispatchEvent(e);
}

// The index of the selected image in the visible gallery, -1 when none is selected.
function selected_gallery_index() {
    var content = get_uiCurrentTabContent() || gradioApp();
    var gallery = content.querySelector('.gradio-gallery, [id$="_gallery"]');
    if (!gallery) return -1;
    // Gradio 6: the strip under an opened image (thumbnail-small), else the grid (thumbnail-lg).
    var buttons = gallery.querySelectorAll('.thumbnail-item.thumbnail-small');
    if (!buttons.length) buttons = gallery.querySelectorAll('.thumbnail-item');
    for (var i = 0; i < buttons.length; i++) {
        if (buttons[i].classList.contains('selected')) return i;
    }
    return -1;
}

function switch_to_tab(name) {
    var buttons = gradioApp().querySelectorAll('#tabs button[role="tab"], #tabs > .tab-nav > button');
    for (var i = 0; i < buttons.length; i++) {
        if (buttons[i].textContent.trim() === name) {
            buttons[i].click();
            return;
        }
    }
}

function switch_to_txt2img() {
    switch_to_tab('txt2img');
    return Array.from(arguments);
}

// Click a tab by its element id (Gradio 6 names the button `<elem_id>-button`): the main tab and
// img2img's first mode sub-tab are both labelled "img2img".
function atelierSelectTab(elemId) {
    var button = gradioApp().querySelector('#' + elemId + '-button');
    if (button) button.click();
}

function switch_to_img2img_tab(no) {
    var modes = ['img2img_img2img_tab', 'img2img_img2img_sketch_tab', 'img2img_inpaint_tab',
                 'img2img_inpaint_sketch_tab', 'img2img_inpaint_upload_tab', 'img2img_batch_tab'];
    atelierSelectTab('tab_img2img');
    if (modes[no]) atelierSelectTab(modes[no]);
}

function switch_to_img2img() {
    switch_to_img2img_tab(0);
    return Array.from(arguments);
}

function switch_to_sketch() {
    switch_to_img2img_tab(1);
    return Array.from(arguments);
}

function switch_to_inpaint() {
    switch_to_img2img_tab(2);
    return Array.from(arguments);
}

function switch_to_inpaint_sketch() {
    switch_to_img2img_tab(3);
    return Array.from(arguments);
}

function switch_to_extras() {
    atelierSelectTab('tab_extras');
    return Array.from(arguments);
}

function atelierOptionsUrl() {
    // Relative to the page, so a server behind a sub-path still finds it.
    return 'atelier/opts.json';
}

var atelierOptionsText = null;

// Read the settings; onOptionsChanged runs only when they differ from the last read.
function atelierRefreshOptions() {
    return fetch(atelierOptionsUrl(), {credentials: 'same-origin'}).then(function(response) {
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.text();
    }).then(function(text) {
        if (text === atelierOptionsText) return;
        atelierOptionsText = text;
        var first = Object.keys(opts).length === 0;
        opts = JSON.parse(text);
        if (first) {
            var queue = optionsAvailableCallbacks;
            optionsAvailableCallbacks = [];
            executeCallbacks(queue);
        }
        executeCallbacks(optionsChangedCallbacks);
    }).catch(function(e) {
        console.error('Atelier: cannot read the settings for `opts`:', e);
    });
}

(function() {
    var loaded = false;
    var refreshTimer = null;

    function refreshOptionsSoon() {
        // After Apply, the new values are saved by the Gradio event; read them once it has answered.
        clearTimeout(refreshTimer);
        refreshTimer = setTimeout(atelierRefreshOptions, 300);
    }

    function watchSettingsResult() {
        var result = gradioApp().getElementById('settings_result');
        if (!result || result.atelierWatched) return;
        result.atelierWatched = true;
        new MutationObserver(refreshOptionsSoon).observe(result, {childList: true, subtree: true, characterData: true});
    }

    // Gradio 6 mounts the page in steps, and mounts a tab's content only when the tab is first
    // opened (Tab's render_children is not read by its front end). A1111's page had every tab in the
    // DOM, so before onUiLoaded Atelier opens each main tab once (its content then stays, hidden),
    // returns to the first one, and waits until every element id the page's config says is shown
    // exists. The ids come from window.gradio_config; hidden components, closed accordions and
    // unselected inner tabs are not mounted by Gradio and are not waited for.
    var mounting = false;
    var WAIT_PER_TAB_MS = 10000;

    function configIndex() {
        var config = window.gradio_config;
        if (!config || !config.layout || !config.components) return null;
        var byId = {};
        config.components.forEach(function(component) {
            byId[component.id] = component;
        });
        return {layout: config.layout, byId: byId};
    }

    function findNode(node, predicate) {
        if (predicate(node)) return node;
        var children = node.children || [];
        for (var i = 0; i < children.length; i++) {
            var found = findNode(children[i], predicate);
            if (found) return found;
        }
        return null;
    }

    // The elem_ids under `node` that Gradio shows once its tab is open.
    function shownIds(node, byId, out) {
        var component = byId[node.id] || {type: 'root', props: {}};
        var props = component.props || {};
        if (props.visible === false) return out;
        if (props.elem_id) out.push(props.elem_id);
        if (component.type === 'accordion' && props.open === false) return out;
        var children = node.children || [];
        if (component.type === 'tabs') {
            var selected = props.selected;
            var first = children.find(function(child) {
                var childProps = (byId[child.id] || {}).props || {};
                return childProps.visible !== false && (selected === undefined || selected === null ||
                    childProps.id === selected || child.id === selected);
            });
            children = first ? [first] : [];
        }
        children.forEach(function(child) {
            shownIds(child, byId, out);
        });
        return out;
    }

    function allPresent(ids) {
        var app = gradioApp();
        return ids.every(function(id) {
            return app.getElementById(id) !== null;
        });
    }

    function waitFor(condition, timeoutMs, then) {
        var started = Date.now();
        (function poll() {
            if (condition() || Date.now() - started > timeoutMs) {
                then();
                return;
            }
            setTimeout(poll, 30);
        })();
    }

    function mainTabButtons() {
        var tabs = gradioApp().getElementById('tabs');
        if (!tabs) return [];
        return Array.from(tabs.querySelectorAll('button[role="tab"]')).filter(function(button) {
            return !button.closest('.tabitem');
        });
    }

    function mountAllTabs(done) {
        var index = configIndex();
        var tabsNode = index && findNode(index.layout, function(node) {
            var component = index.byId[node.id];
            return component && component.type === 'tabs' && (component.props || {}).elem_id === 'tabs';
        });
        if (!tabsNode) {
            done();
            return;
        }
        var tabItems = (tabsNode.children || []).filter(function(child) {
            var component = index.byId[child.id];
            return component && component.type === 'tabitem' && (component.props || {}).visible !== false;
        });
        var buttons = mainTabButtons();
        var start = buttons.find(function(button) {
            return button.getAttribute('aria-selected') === 'true';
        });
        // While the other tabs mount, the first one stays on screen and they are kept out of sight.
        var startId = null;
        var hiddenIds = [];
        tabItems.forEach(function(item) {
            var elemId = ((index.byId[item.id] || {}).props || {}).elem_id;
            if (!elemId) return;
            if (startId === null && start && ((index.byId[item.id] || {}).props || {}).label === start.textContent.trim()) {
                startId = elemId;
            } else {
                hiddenIds.push(elemId);
            }
        });
        var style = document.createElement('style');
        style.textContent = (startId ? '#' + CSS.escape(startId) + ' { display: flex !important; }\n' : '') +
            hiddenIds.map(function(id) {
                return '#' + CSS.escape(id);
            }).join(', ') + ' { position: absolute !important; left: -100000px !important; visibility: hidden !important; }';
        if (hiddenIds.length) document.head.appendChild(style);
        var finish = function() {
            style.remove();
            done();
        };
        var step = 0;
        (function next() {
            if (step >= tabItems.length) {
                if (start) start.click();
                waitFor(function() {
                    return !start || start.getAttribute('aria-selected') === 'true';
                }, WAIT_PER_TAB_MS, finish);
                return;
            }
            var item = tabItems[step++];
            var label = ((index.byId[item.id] || {}).props || {}).label;
            var ids = shownIds(item, index.byId, []);
            if (allPresent(ids)) {
                next();
                return;
            }
            var button = mainTabButtons().find(function(candidate) {
                return candidate.textContent.trim() === String(label).trim();
            });
            if (!button) {
                next();
                return;
            }
            button.click();
            waitFor(function() {
                return allPresent(ids);
            }, WAIT_PER_TAB_MS, next);
        })();
    }

    function fireLoaded() {
        if (loaded) return;
        loaded = true;
        // For tests and user scripts: every tab's content is in the page from here on.
        document.body.setAttribute('data-atelier-ui-loaded', 'true');
        executeCallbacks(uiLoadedCallbacks);
        var quicksettings = gradioApp().getElementById('quicksettings');
        if (quicksettings) quicksettings.addEventListener('change', refreshOptionsSoon);
        // A quicksetting applied from a dropdown fires no DOM change event; its status line changes.
        var status = gradioApp().getElementById('model_status');
        if (status) new MutationObserver(refreshOptionsSoon).observe(status, {childList: true, subtree: true, characterData: true});
        watchSettingsResult();
    }

    function checkLoaded() {
        if (loaded || mounting || !gradioApp().getElementById('txt2img_prompt')) return;
        mounting = true;
        mountAllTabs(fireLoaded);
    }

    var observer = new MutationObserver(function(mutations) {
        checkLoaded();
        if (loaded) watchSettingsResult();

        executeCallbacks(uiUpdateCallbacks, mutations);
        clearTimeout(uiAfterUpdateTimeout);
        uiAfterUpdateTimeout = setTimeout(function() {
            executeCallbacks(uiAfterUpdateCallbacks);
        }, 200);

        var newTab = get_uiCurrentTab();
        if (newTab && newTab !== uiCurrentTab) {
            uiCurrentTab = newTab;
            if (loaded) executeCallbacks(uiTabChangeCallbacks);  // not for the page's own tab visits at load
        }
    });

    function start() {
        var root = gradioApp();
        observer.observe(root.host ? root : document.body, {childList: true, subtree: true});
        atelierRefreshOptions();
    }

    // A1111's hints: an element without a title whose text (or value) is a key of `titles` gets it.
    onAfterUiUpdate(function() {
        if (!titles || typeof titles !== 'object') return;
        gradioApp().querySelectorAll('span, button, select > option, input[type=button]').forEach(function(el) {
            if (el.title) return;
            var text = (el.textContent || el.value || '').trim();
            var tooltip = Object.prototype.hasOwnProperty.call(titles, text) ? titles[text] : null;
            if (typeof tooltip === 'string' && tooltip) el.title = tooltip;
        });
    });

    if (document.readyState === 'loading') {
        document.addEventListener('DOMContentLoaded', start);
    } else {
        start();
    }
})();
