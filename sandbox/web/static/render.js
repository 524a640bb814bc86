// One message as Discord draws it: author, content, attachments, embeds and components.
// Everything is built with DOM calls; only markdown() output is set as HTML (it escapes first).

import { markdown } from "./markdown.js";

const BOT_COLOUR = "#5865f2";
const BUTTON_STYLES = { 1: "primary", 2: "secondary", 3: "success", 4: "danger", 5: "link", 6: "premium" };

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "className") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "html") node.innerHTML = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

export function avatar(name, colour, small = false) {
  return el("span", {
    className: small ? "avatar small" : "avatar", "aria-hidden": "true",
    style: { background: colour }, text: (name || "?").slice(0, 1).toUpperCase(),
  });
}

function colourOf(value) {
  return value === undefined || value === null ? null : `#${Number(value).toString(16).padStart(6, "0")}`;
}

function emojiText(emoji) {
  if (!emoji) return "";
  return emoji.id ? `:${emoji.name}:` : emoji.name;
}

// ctx: {users: Map id->{name, colour}, names: Map id->name, onClick(messageId, customId, values)}
export function renderMessage(message, ctx) {
  const author = message.author;
  const person = ctx.users.get(author.id);
  const colour = author.bot ? BOT_COLOUR : person?.colour ?? "#747f8d";
  const attachments = new Map(message.attachments.map((a) => [a.filename, a]));
  const inEmbeds = new Set();
  for (const embed of message.embeds) {
    for (const key of ["image", "thumbnail"]) {
      const url = embed[key]?.url ?? "";
      if (url.startsWith("attachment://")) inEmbeds.add(url.slice("attachment://".length));
    }
  }

  const header = el("header", { className: "message-header" }, [
    el("span", { className: "author", text: author.name }),
    author.bot ? el("span", { className: "bot-tag", text: "APP" }) : null,
    el("time", { datetime: message.timestamp, text: new Date(message.timestamp).toLocaleTimeString() }),
    message.edited ? el("span", { className: "edited", text: "(edited)" }) : null,
  ]);
  const body = el("div", { className: "message-body" }, [header]);
  if (message.interaction?.command) {
    body.prepend(el("p", { className: "used-command" }, [
      el("span", { className: "mention", text: `@${message.interaction.user_name}` }),
      ` used ${message.interaction.command}`,
    ]));
  }
  if (message.loading) {
    body.append(el("p", { className: "loading", text: `${author.name} is thinking…` }));
  }
  if (message.content) {
    body.append(el("div", { className: "content", html: markdown(message.content, ctx.names) }));
  }
  const loose = message.attachments.filter((a) => !inEmbeds.has(a.filename));
  if (loose.length) {
    body.append(el("div", { className: "attachments" }, loose.map((a) => renderAttachment(a))));
  }
  for (const embed of message.embeds) body.append(renderEmbed(embed, attachments, ctx));
  if (message.components.length) {
    body.append(el("div", { className: "components" },
      message.components.map((c) => renderComponent(c, message, ctx))));
  }
  if (message.ephemeral) {
    body.append(el("p", { className: "ephemeral-note", text: "Only you can see this" }));
  }
  return el("article", {
    className: message.ephemeral ? "message ephemeral" : "message",
    dataset: { messageId: message.id }, "aria-label": `${author.name}'s message`,
  }, [avatar(author.name, colour), body]);
}

function renderAttachment(attachment) {
  const isImage = (attachment.content_type ?? "").startsWith("image/")
    || /\.(png|jpe?g|gif|webp)$/i.test(attachment.filename);
  if (!isImage) {
    return el("a", { className: "file", href: attachment.url, download: attachment.filename, text: attachment.filename });
  }
  return el("a", { href: attachment.url, target: "_blank", rel: "noopener", className: "image-link" }, [
    el("img", { className: "attachment", src: attachment.url, alt: attachment.alt }),
  ]);
}

function embedImage(url, attachments, className) {
  if (!url) return null;
  if (url.startsWith("attachment://")) {
    const attachment = attachments.get(url.slice("attachment://".length));
    if (!attachment) return null;
    const image = renderAttachment(attachment);
    image.classList.add(className);
    return image;
  }
  return el("img", { className, src: url, alt: "" });
}

function renderEmbed(embed, attachments, ctx) {
  const colour = colourOf(embed.color);
  const node = el("div", { className: "embed", style: colour ? { borderLeftColor: colour } : {} });
  if (embed.author?.name) node.append(el("p", { className: "embed-author", text: embed.author.name }));
  if (embed.title) {
    const title = embed.url
      ? el("a", { href: embed.url, target: "_blank", rel: "noopener noreferrer", html: markdown(embed.title, ctx.names) })
      : el("span", { html: markdown(embed.title, ctx.names) });
    node.append(el("h3", { className: "embed-title" }, [title]));
  }
  if (embed.description) {
    node.append(el("div", { className: "embed-description", html: markdown(embed.description, ctx.names) }));
  }
  if (embed.fields?.length) {
    node.append(el("dl", { className: "embed-fields" }, embed.fields.map((field) =>
      el("div", { className: field.inline ? "embed-field inline" : "embed-field" }, [
        el("dt", { className: "embed-field-name", html: markdown(field.name, ctx.names) }),
        el("dd", { className: "embed-field-value", html: markdown(field.value, ctx.names) }),
      ]))));
  }
  node.append(embedImage(embed.image?.url, attachments, "embed-image") ?? "");
  const thumb = embedImage(embed.thumbnail?.url, attachments, "embed-thumbnail");
  if (thumb) node.prepend(thumb);
  if (embed.footer?.text || embed.timestamp) {
    const parts = [embed.footer?.text, embed.timestamp && new Date(embed.timestamp).toLocaleString()];
    node.append(el("p", { className: "embed-footer", text: parts.filter(Boolean).join(" • ") }));
  }
  return node;
}

function renderComponent(component, message, ctx) {
  switch (component.type) {
    case 1: // action row
      return el("div", { className: "component-row" },
        (component.components ?? []).map((c) => renderComponent(c, message, ctx)));
    case 2:
      return renderButton(component, message, ctx);
    case 3: case 5: case 6: case 7: case 8:
      return renderSelect(component, message, ctx);
    case 10: // text display (components v2)
      return el("div", { className: "content", html: markdown(component.content ?? "", ctx.names) });
    case 14:
      return el("hr", { className: "separator" });
    default: { // sections, containers: draw what they hold
      const children = [...(component.components ?? [])];
      if (component.accessory) children.push(component.accessory);
      return el("div", { className: "component-group" }, children.map((c) => renderComponent(c, message, ctx)));
    }
  }
}

function renderButton(component, message, ctx) {
  const style = BUTTON_STYLES[component.style] ?? "secondary";
  const text = [emojiText(component.emoji), component.label].filter(Boolean).join(" ");
  if (component.style === 5) {
    return el("a", { className: "button link", href: component.url, target: "_blank", rel: "noopener noreferrer", text: `${text} ↗` });
  }
  const button = el("button", { type: "button", className: `button ${style}`, disabled: Boolean(component.disabled), text });
  if (!component.label && component.emoji) button.setAttribute("title", component.emoji.name);
  button.addEventListener("click", () => ctx.onClick(message.id, component.custom_id, null, button));
  return button;
}

function renderSelect(component, message, ctx) {
  const label = component.placeholder || "Make a selection";
  const select = el("select", { className: "component-select", "aria-label": label, disabled: Boolean(component.disabled) });
  select.multiple = (component.max_values ?? 1) > 1;
  if (!select.multiple) select.append(el("option", { value: "", text: label, disabled: true, selected: true }));
  const options = component.type === 3 ? component.options ?? []
    : [...ctx.users.entries()].map(([id, user]) => ({ value: id, label: user.name }));
  for (const option of options) {
    select.append(el("option", { value: option.value, text: [emojiText(option.emoji), option.label].filter(Boolean).join(" "), selected: Boolean(option.default) }));
  }
  select.addEventListener("change", () => {
    const values = [...select.selectedOptions].map((o) => o.value).filter(Boolean);
    if (values.length) ctx.onClick(message.id, component.custom_id, values, select);
  });
  return select;
}
