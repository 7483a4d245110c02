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
    var buttons = gallery.querySelectorAll('.thumbnail-item.thumbnail-small, button.thumbnail-item');
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

function atelierOptionsUrl() {
    // Relative to the page, so a server behind a sub-path still finds it.
    return 'atelier/opts.json';
}

function atelierRefreshOptions() {
    return fetch(atelierOptionsUrl(), {credentials: 'same-origin'}).then(function(response) {
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.json();
    }).then(function(data) {
        var first = Object.keys(opts).length === 0;
        opts = data;
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

    var observer = new MutationObserver(function(mutations) {
        if (!loaded && gradioApp().getElementById('txt2img_prompt')) {
            loaded = true;
            executeCallbacks(uiLoadedCallbacks);
            var quicksettings = gradioApp().getElementById('quicksettings');
            if (quicksettings) quicksettings.addEventListener('change', refreshOptionsSoon);
        }
        if (loaded) watchSettingsResult();

        executeCallbacks(uiUpdateCallbacks, mutations);
        clearTimeout(uiAfterUpdateTimeout);
        uiAfterUpdateTimeout = setTimeout(function() {
            executeCallbacks(uiAfterUpdateCallbacks);
        }, 200);

        var newTab = get_uiCurrentTab();
        if (newTab && newTab !== uiCurrentTab) {
            uiCurrentTab = newTab;
            executeCallbacks(uiTabChangeCallbacks);
        }
    });

    function start() {
        var root = gradioApp();
        observer.observe(root.host ? root : document.body, {childList: true, subtree: true});
        atelierRefreshOptions();
    }

    if (document.readyState === 'loading') {
        document.addEventListener('DOMContentLoaded', start);
    } else {
        start();
    }
})();
