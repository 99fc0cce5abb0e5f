// The zoom dialog: one camera's full image, panned by drag, zoomed by pinch, wheel, double tap or the buttons.

const MAX_SCALE = 8;

export class Zoom {
  constructor(dialog) {
    this.dialog = dialog;
    this.stage = dialog.querySelector("#zoom-stage");
    this.image = dialog.querySelector("#zoom-image");
    this.title = dialog.querySelector("#zoom-title");
    this.loading = dialog.querySelector("#zoom-loading");
    this.views = [];
    this.index = 0;
    this.onMove = () => {};
    this.scale = 1;
    this.fitScale = 1;
    this.x = 0;
    this.y = 0;
    this.pointers = new Map();

    this.image.addEventListener("load", () => {
      this.loading.hidden = true;
      this.fit();
    });
    this.image.addEventListener("error", () => {
      this.loading.hidden = false;
      this.loading.textContent = "The image could not be loaded.";
    });
    dialog.querySelector(".zoom-tools").addEventListener("click", (event) => {
      const action = event.target.closest("[data-zoom]")?.dataset.zoom;
      if (action === "close") this.close();
      else if (action === "prev") this.move(-1);
      else if (action === "next") this.move(1);
      else if (action === "in") this.zoomBy(1.5);
      else if (action === "out") this.zoomBy(1 / 1.5);
      else if (action === "fit") this.fit();
    });
    dialog.addEventListener("keydown", (event) => {
      const step = { ArrowLeft: -1, ArrowUp: -1, ArrowRight: 1, ArrowDown: 1 }[event.key];
      if (step) {
        event.preventDefault();
        this.move(step);
      } else if (event.key === "+" || event.key === "=") this.zoomBy(1.5);
      else if (event.key === "-") this.zoomBy(1 / 1.5);
      else if (event.key === "0") this.fit();
    });
    this.stage.addEventListener("wheel", (event) => {
      event.preventDefault();
      const box = this.stage.getBoundingClientRect();
      this.zoomAt(Math.exp(-event.deltaY * 0.0015), event.clientX - box.left, event.clientY - box.top);
    }, { passive: false });
    this.stage.addEventListener("dblclick", (event) => {
      const box = this.stage.getBoundingClientRect();
      if (this.scale > this.fitScale * 1.01) this.fit();
      else this.zoomAt(2.5, event.clientX - box.left, event.clientY - box.top);
    });
    this.stage.addEventListener("pointerdown", (event) => {
      this.stage.setPointerCapture(event.pointerId);
      this.pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
    });
    this.stage.addEventListener("pointermove", (event) => this.drag(event));
    for (const type of ["pointerup", "pointercancel"]) {
      this.stage.addEventListener(type, (event) => this.pointers.delete(event.pointerId));
    }
    new ResizeObserver(() => this.dialog.open && this.fit()).observe(this.stage);
  }

  /** views: [{label, src}]; onMove(index) tells the screen which camera is shown. */
  open(views, index, onMove) {
    this.views = views;
    this.onMove = onMove;
    if (!this.dialog.open) this.dialog.showModal();
    this.stage.focus();
    this.show(index);
  }

  close() {
    if (this.dialog.open) this.dialog.close();
  }

  move(step) {
    const count = this.views.length;
    if (count) this.show((this.index + step + count) % count);
  }

  show(index) {
    this.index = index;
    const view = this.views[index];
    this.title.textContent = view.label;
    this.image.alt = view.label;
    this.loading.hidden = false;
    this.loading.textContent = "Loading full image…";
    if (this.image.getAttribute("src") !== view.src) this.image.src = view.src;
    else if (this.image.complete) {
      this.loading.hidden = true;
      this.fit();
    }
    this.onMove(index);
  }

  fit() {
    const { clientWidth: w, clientHeight: h } = this.stage;
    const { naturalWidth: iw, naturalHeight: ih } = this.image;
    if (!iw || !ih) return;
    this.fitScale = Math.min(w / iw, h / ih);
    this.scale = this.fitScale;
    this.x = (w - iw * this.scale) / 2;
    this.y = (h - ih * this.scale) / 2;
    this.apply();
  }

  zoomBy(factor) {
    this.zoomAt(factor, this.stage.clientWidth / 2, this.stage.clientHeight / 2);
  }

  zoomAt(factor, cx, cy) {
    const scale = Math.min(Math.max(this.scale * factor, this.fitScale * 0.5), MAX_SCALE);
    this.x = cx - (cx - this.x) * (scale / this.scale);
    this.y = cy - (cy - this.y) * (scale / this.scale);
    this.scale = scale;
    this.apply();
  }

  drag(event) {
    const last = this.pointers.get(event.pointerId);
    if (!last) return;
    const now = { x: event.clientX, y: event.clientY };
    if (this.pointers.size === 1) {
      this.x += now.x - last.x;
      this.y += now.y - last.y;
      this.apply();
    } else if (this.pointers.size === 2) {
      const [other] = [...this.pointers.entries()].filter(([id]) => id !== event.pointerId).map(([, p]) => p);
      const before = Math.hypot(last.x - other.x, last.y - other.y);
      const after = Math.hypot(now.x - other.x, now.y - other.y);
      const box = this.stage.getBoundingClientRect();
      if (before > 0) this.zoomAt(after / before, (now.x + other.x) / 2 - box.left, (now.y + other.y) / 2 - box.top);
    }
    this.pointers.set(event.pointerId, now);
  }

  apply() {
    this.image.style.transform = `translate(${this.x}px, ${this.y}px) scale(${this.scale})`;
  }
}
