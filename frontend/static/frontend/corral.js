/* Corral UI: the few behaviours htmx does not cover. No build step, no dependencies. */
(function () {
  "use strict";
  // The project switcher submits on change (a button is shown when scripts are off).
  document.addEventListener("change", function (event) {
    var el = event.target;
    if (el.matches && el.matches("select[data-autosubmit]")) {
      el.form.submit();
    }
  });
  // The container form: a host container runs the host's userspace, so it has no image.
  function syncMode() {
    var checked = document.querySelector("input[name=mode]:checked");
    var image = document.getElementById("f-image");
    if (!checked || !image) return;
    var field = image.closest(".field");
    field.hidden = checked.value === "host";
    image.disabled = checked.value === "host";
  }
  document.addEventListener("change", function (event) {
    if (event.target.name === "mode") syncMode();
  });
  document.addEventListener("DOMContentLoaded", syncMode);

  // Copy buttons: data-copy="#selector" copies that element's text.
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy]") : null;
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.textContent.trim();
    var done = function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { selectText(source); });
    } else {
      selectText(source);
    }
  });
  function selectText(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
  // Keep the log view scrolled to the end when it is already at the end.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var pre = event.detail.target.querySelector && event.detail.target.querySelector("pre.logs");
    var atEnd = !pre || pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
    event.detail.target.dataset.stick = atEnd ? "1" : "0";
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail.target;
    var pre = target.querySelector && target.querySelector("pre.logs");
    if (pre && target.dataset.stick === "1") pre.scrollTop = pre.scrollHeight;
  });
})();
