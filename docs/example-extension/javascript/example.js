// Loaded into the page's <head> by Atelier (and A1111). Keep extension scripts small and defensive:
// the page may not be built yet when this runs.
document.addEventListener("DOMContentLoaded", () => {
    console.debug("example-extension: javascript loaded");
});
