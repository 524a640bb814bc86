// A modal the bot answered with (Remix), as a <dialog> of labelled inputs.

// Text inputs sit in action rows (type 1) or, in newer layouts, in labels (type 18).
function inputs(modal) {
  const found = [];
  for (const row of modal.components ?? []) {
    if (row.type === 1) {
      for (const c of row.components ?? []) found.push({ input: c, label: c.label, description: null });
    } else if (row.component) {
      found.push({ input: row.component, label: row.label, description: row.description });
    }
  }
  return found.filter((f) => f.input.type === 4);
}

export function openModal(modal, submit) {
  const dialog = document.getElementById("modal");
  const form = document.getElementById("modal-form");
  const error = document.getElementById("modal-error");
  document.getElementById("modal-title").textContent = modal.title;
  error.hidden = true;
  const fields = inputs(modal).map(({ input, label, description }, index) => {
    const id = `modal-input-${index}`;
    const wrapper = document.createElement("div");
    wrapper.className = "modal-field";
    const labelNode = Object.assign(document.createElement("label"), { htmlFor: id, textContent: label ?? input.custom_id });
    const control = document.createElement(input.style === 2 ? "textarea" : "input");
    Object.assign(control, { id, name: input.custom_id, value: input.value ?? "", required: input.required ?? true });
    if (input.placeholder) control.placeholder = input.placeholder;
    if (input.max_length) control.maxLength = input.max_length;
    if (input.min_length) control.minLength = input.min_length;
    if (input.style === 2) control.rows = 4;
    wrapper.append(labelNode, control);
    if (description) wrapper.append(Object.assign(document.createElement("small"), { textContent: description }));
    return wrapper;
  });
  document.getElementById("modal-fields").replaceChildren(...fields);

  const button = document.getElementById("modal-submit");
  form.onsubmit = async (event) => {
    event.preventDefault();
    const values = Object.fromEntries([...form.querySelectorAll("input, textarea")].map((c) => [c.name, c.value]));
    button.disabled = true;
    try {
      await submit(values);
      dialog.close();
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  };
  document.getElementById("modal-cancel").onclick = () => dialog.close();
  dialog.showModal();
  dialog.querySelector("input, textarea")?.focus();
}
