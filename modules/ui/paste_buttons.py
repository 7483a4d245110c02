"""The extensions' "Send to <tab>" buttons (A1111's `infotext_utils.register_paste_params_button`),
wired once the page is built (A1111's `connect_paste_params_buttons`).

A button sending to "txt2img" pastes like PNG Info's "Send to txt2img" (request fields, the scripts'
`infotext_fields`, the `on_infotext_pasted` callbacks) and switches to the tab; one sending to
"img2img" or "inpaint" pastes into the img2img tab, puts the image in that sub-tab and switches to it;
one sending to "extras" puts the image into the Extras tab's Single Image and switches to it (the
image only, as A1111); one sending to a tab an extension registered with `add_paste_fields` fills
that tab's fields.
"""

from __future__ import annotations

import logging

from modules.extension_host.paste_fields import connect_paste
from modules.ui.shared import UiShared

log = logging.getLogger(__name__)


def connect_bindings(context, shared: UiShared) -> None:
    """Wire every registered binding not wired yet; call inside the page's Blocks, after the tabs."""
    from modules.ui.txt2img import wire_send_to_txt2img

    runtime = getattr(context, "extensions", None)
    if runtime is None:
        return
    registry = runtime.scripts.paste
    missing_tabs: dict[str, int] = {}  # tab name -> buttons that send there, logged once below
    for binding in registry.bindings:
        if id(binding) in registry.connected:
            continue
        registry.connected.add(id(binding))
        button, source = binding.paste_button, binding.source_text_component
        image = getattr(binding, "source_image_component", None)
        if binding.tabname in ("img2img", "inpaint") and button is not None and shared.img2img is not None:
            from modules.ui.img2img import IMG2IMG_MODE, INPAINT_MODE, wire_send_image, wire_send_infotext

            mode = INPAINT_MODE if binding.tabname == "inpaint" else IMG2IMG_MODE
            if source is not None:
                wire_send_infotext(context, shared, button, source, image, mode)
            elif image is not None:
                try:
                    wire_send_image(context, shared, button, image, None, mode)
                except TypeError as error:  # not an image component: its value is no file to open
                    log.warning("An extension's 'send to %s' button: %s", binding.tabname, error)
            else:
                log.info("A 'send to %s' button has neither an infotext nor an image to send", binding.tabname)
        elif binding.tabname == "extras" and button is not None and shared.extras is not None:
            from modules.ui.extras_tab import wire_send_to_extras

            if image is None:
                log.info("A 'send to extras' button has no image to send; it does nothing")
                continue
            try:
                wire_send_to_extras(shared, button, image)
            except TypeError as error:  # not an image component: its value is no file to open
                log.warning("An extension's 'send to extras' button: %s", error)
        elif button is None or source is None:
            log.info("A 'send to %s' button has no infotext component to read (a tab-to-tab copy, which "
                     "needs a second generation tab); it does nothing in Atelier", binding.tabname)
        elif binding.tabname == "txt2img":
            wire_send_to_txt2img(context, shared, button, source)
        elif binding.tabname in registry.paste_fields:
            connect_paste(button, registry.paste_fields[binding.tabname]["fields"], source,
                          callbacks=runtime.callbacks)
        else:
            missing_tabs[binding.tabname] = missing_tabs.get(binding.tabname, 0) + 1
    for tabname, count in missing_tabs.items():
        log.info("%d 'send to %s' button(s) registered by extensions do nothing: Atelier has no such tab",
                 count, tabname)
