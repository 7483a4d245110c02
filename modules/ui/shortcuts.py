"""The page's keyboard shortcuts, as an A1111 user's hands know them.

    Ctrl+Enter (Cmd+Enter)   Generate in the current txt2img / img2img / Extras tab, wherever the focus is
    Alt+Enter                Skip the current image of that tab's job
    Esc                      Interrupt that tab's job (not while Esc closes a dropdown, dialog or full-screen view)
    Ctrl+Up / Ctrl+Down      in a prompt box: change the emphasis of the selection, or of the word (or the
                             parenthesised group, or the <extra network:weight>) at the cursor
    Alt+Left / Alt+Right     in a prompt box: move the comma-separated element at the cursor (`keyedit_move`)

The text arithmetic is in pure functions, `atelierEditWeight(text, start, end, up, options)` and
`atelierMoveElement(text, start, end, left)`, kept on `window` so a test (or a user script) can call them
with plain values. The steps and word delimiters are A1111's settings `keyedit_precision_attention`,
`keyedit_precision_extra`, `keyedit_delimiters` and `keyedit_delimiters_whitespace`, and `keyedit_move`
switches Alt+Left/Right; the page reads them from `opts` (javascript/atelier.js) at each key press. After an edit the textarea gets an `input` event, which is how Gradio learns the new value.

Behaviour follows A1111's (`(word)` with no weight counts as unweighted here, `[word]` is text, a weight
that returns to 1 drops its parentheses); the code is Atelier's own.
"""

from __future__ import annotations

import json

# Tabs whose Generate / Interrupt / Skip buttons the keys press: `#<tab>_generate` etc.
GENERATION_TABS = ("txt2img", "img2img", "extras")

# The emphasis arithmetic: pure (text and numbers in, text and selection out), no DOM.
EDIT_WEIGHT_JS = r"""
const atelierEditWeight = (text, start, end, up, options) => {
    options = options || {};
    const attentionStep = Number(options.attention) > 0 ? Number(options.attention) : 0.1;
    const extraStep = Number(options.extra) > 0 ? Number(options.extra) : 0.05;
    const delimiters = (typeof options.delimiters === 'string' ? options.delimiters : '.,\\/!?%^*;:{}=`~() ') +
        (typeof options.whitespace === 'string' ? options.whitespace : '\t\r\n');
    const NUMBER = '(-?\\d+(?:\\.\\d+)?)';
    const decimals = (value) => {
        const text = String(value);
        return text.includes('.') ? text.length - text.indexOf('.') - 1 : 0;
    };
    // Step the weight, rounded to the step's (or the weight's) decimals: 1.1 + 0.1 = 1.2, not 1.2000000000000002.
    const stepped = (weightText, step) => {
        const places = Math.min(6, Math.max(decimals(step), decimals(weightText)));
        return Number((parseFloat(weightText) + (up ? step : -step)).toFixed(places));
    };
    const written = (weight) => Number.isInteger(weight) ? weight.toFixed(1) : String(weight);
    const escaped = (i) => i > 0 && text[i - 1] === '\\';
    // The innermost `open`…`close` pair around the cursor, nesting and escapes respected.
    const enclosing = (at, open, close) => {
        let depth = 0, left = -1, right = -1;
        for (let i = at - 1; i >= 0; i--) {
            if (escaped(i)) continue;
            if (text[i] === close) depth++;
            else if (text[i] === open) {
                if (depth === 0) { left = i; break; }
                depth--;
            }
        }
        if (left < 0) return null;
        depth = 0;
        for (let i = at; i < text.length; i++) {
            if (escaped(i)) continue;
            if (text[i] === open) depth++;
            else if (text[i] === close) {
                if (depth === 0) { right = i; break; }
                depth--;
            }
        }
        return right < 0 ? null : {left: left, right: right};
    };

    if (start === end) {
        const tag = enclosing(start, '<', '>');
        if (tag) {  // <lora:name:0.8>: the last field is the multiplier
            const parts = text.slice(tag.left + 1, tag.right).split(':');
            if (parts.length < 2 || !parts[1]) return null;
            const hasWeight = parts.length >= 3 && new RegExp('^' + NUMBER + '$').test(parts[parts.length - 1]);
            const weight = hasWeight ? stepped(parts.pop(), extraStep) : stepped('1', extraStep);
            parts.push(String(weight));
            const edited = text.slice(0, tag.left + 1) + parts.join(':') + text.slice(tag.right);
            const cursor = Math.min(start, tag.left + 1 + parts.join(':').length);
            return {text: edited, start: cursor, end: cursor};
        }
        const group = enclosing(start, '(', ')');
        const weighted = group && new RegExp(':' + NUMBER + '$').exec(text.slice(group.left + 1, group.right));
        if (weighted) {
            start = group.left + 1;
            end = group.right - weighted[0].length;
        } else {
            while (start > 0 && !delimiters.includes(text[start - 1])) start--;
            while (end < text.length && !delimiters.includes(text[end])) end++;
        }
    } else {
        while (start < end && /\s/.test(text[start])) start++;
        while (end > start && /\s/.test(text[end - 1])) end--;
        // A selection that is a whole weighted group, "(a:1.3)": its content is what is weighted.
        const whole = new RegExp('^\\(([\\s\\S]+):' + NUMBER + '\\)$').exec(text.slice(start, end));
        const group = whole && enclosing(start + 1, '(', ')');
        if (group && group.left === start && group.right === end - 1) {
            start += 1;
            end = start + whole[1].length;
        }
    }
    if (start >= end) return null;
    const selected = text.slice(start, end);
    const after = new RegExp('^:' + NUMBER + '\\)').exec(text.slice(end));
    if (start > 0 && text[start - 1] === '(' && !escaped(start - 1) && after) {
        const weight = stepped(after[1], attentionStep);
        if (weight === 1) {  // back to plain text
            return {text: text.slice(0, start - 1) + selected + text.slice(end + after[0].length),
                    start: start - 1, end: end - 1};
        }
        return {text: text.slice(0, end) + ':' + written(weight) + ')' + text.slice(end + after[0].length),
                start: start, end: end};
    }
    const weight = stepped('1', attentionStep);
    return {text: text.slice(0, start) + '(' + selected + ':' + written(weight) + ')' + text.slice(end),
            start: start + 1, end: end + 1};
};
window.atelierEditWeight = atelierEditWeight;

// Alt+Left/Right: the comma-separated element at the cursor trades places with its neighbour; each
// place keeps its own spaces, the cursor moves with the element. Null when there is no neighbour.
const atelierMoveElement = (text, start, end, left) => {
    const parts = text.split(',');
    const starts = [];
    let at = 0;
    for (const part of parts) {
        starts.push(at);
        at += part.length + 1;
    }
    const index = starts.findIndex((first, i) => start >= first && start <= first + parts[i].length);
    const other = left ? index - 1 : index + 1;
    if (index < 0 || other < 0 || other >= parts.length) return null;
    const split = (part) => /^(\s*)([\s\S]*?)(\s*)$/.exec(part);
    const mine = split(parts[index]), theirs = split(parts[other]);
    if (!mine[2] || !theirs[2]) return null;
    const offset = Math.min(Math.max(start - starts[index] - mine[1].length, 0), mine[2].length);
    parts[index] = mine[1] + theirs[2] + mine[3];
    parts[other] = theirs[1] + mine[2] + theirs[3];
    let cursor = theirs[1].length + offset;
    for (let i = 0; i < other; i++) cursor += parts[i].length + 1;
    return {text: parts.join(','), start: cursor, end: Math.min(cursor + (end - start), cursor + mine[2].length - offset)};
};
window.atelierMoveElement = atelierMoveElement;
"""

# The key handler. `get_uiCurrentTabContent`, `opts` and `updateInput` are javascript/atelier.js's.
KEYS_JS = r"""
const atelierShortcutTabs = %TABS%;
const atelierWhitespace = {'Tab': '\t', 'Carriage Return': '\r', 'Line Feed': '\n'};
const atelierCurrentTab = () => {
    const content = typeof get_uiCurrentTabContent === 'function' ? get_uiCurrentTabContent() : null;
    const name = content && content.id ? content.id.replace(/^tab_/, '') : null;
    return atelierShortcutTabs.includes(name) ? name : null;
};
const atelierShown = (el) => !!el && el.offsetParent !== null && getComputedStyle(el).visibility !== 'hidden';
// Esc that closes something else (an open dropdown, a dialog, a full-screen image) is left to it.
const atelierEscTaken = (event) => {
    const target = event.target;
    if (event.defaultPrevented || document.fullscreenElement) return true;
    if (!target || !target.closest) return false;
    if (target.getAttribute && target.getAttribute('aria-expanded') === 'true') return true;
    if (target.closest('[role=listbox], [role=dialog], .popup-dialog, .gradio-gallery, [id$=_gallery]')) return true;
    return Array.from(document.querySelectorAll('[role=dialog], .popup-dialog')).some(atelierShown);
};
const atelierPress = (tab, action) => {
    const button = document.getElementById(tab + '_' + action);
    if (!atelierShown(button) || button.disabled) return false;
    button.click();
    return true;
};
document.addEventListener('keydown', (event) => {
    const ctrl = event.ctrlKey || event.metaKey;
    if (ctrl && !event.altKey && !event.shiftKey && (event.key === 'ArrowUp' || event.key === 'ArrowDown')) {
        const box = event.target;
        if (!box || box.tagName !== 'TEXTAREA' || !box.closest('[id$=_toprow] [id$=_prompt], .prompt')) return;
        const settings = typeof opts === 'object' && opts ? opts : {};
        const whitespace = Array.isArray(settings.keyedit_delimiters_whitespace)
            ? settings.keyedit_delimiters_whitespace.map((name) => atelierWhitespace[name] || '').join('') : undefined;
        const edit = atelierEditWeight(box.value, box.selectionStart, box.selectionEnd, event.key === 'ArrowUp', {
            attention: settings.keyedit_precision_attention, extra: settings.keyedit_precision_extra,
            delimiters: settings.keyedit_delimiters, whitespace: whitespace});
        event.preventDefault();
        if (!edit) return;
        box.value = edit.text;
        box.setSelectionRange(edit.start, edit.end);
        updateInput(box);
        return;
    }
    if (event.altKey && !ctrl && !event.shiftKey && (event.key === 'ArrowLeft' || event.key === 'ArrowRight')) {
        const box = event.target;
        if (!box || box.tagName !== 'TEXTAREA' || !box.closest('[id$=_toprow] [id$=_prompt], .prompt')) return;
        if (typeof opts === 'object' && opts && opts.keyedit_move === false) return;
        const move = atelierMoveElement(box.value, box.selectionStart, box.selectionEnd, event.key === 'ArrowLeft');
        event.preventDefault();  // also keeps Alt+Left from being the browser's Back
        if (!move) return;
        box.value = move.text;
        box.setSelectionRange(move.start, move.end);
        updateInput(box);
        return;
    }
    const enter = event.key === 'Enter';
    const escape = event.key === 'Escape' && !ctrl && !event.altKey && !event.shiftKey;
    if (!(enter && (ctrl || event.altKey)) && !escape) return;
    const tab = atelierCurrentTab();
    if (!tab) return;
    if (enter && ctrl && !event.altKey) {
        event.preventDefault();
        atelierPress(tab, 'generate');
    } else if (enter && event.altKey && !ctrl) {
        event.preventDefault();
        atelierPress(tab, 'skip');
    } else if (escape && !atelierEscTaken(event)) {
        if (atelierPress(tab, 'interrupt')) event.preventDefault();
    }
});
"""


def shortcuts_js() -> str:
    """Statements for the page's load script (modules.ui.app `JS`): the weight function and the key handler."""
    return EDIT_WEIGHT_JS + KEYS_JS.replace("%TABS%", json.dumps(list(GENERATION_TABS)))
