// The playground page: a Discord channel view over the emulator, live over a websocket.
// Every action is a real interaction the server makes through the emulator (see server.py).

import { findCommand, formatCommand, matchCommands, parseCommand } from "./commands.js";
import { markdown } from "./markdown.js";
import { openModal } from "./modal.js";
import { avatar, renderMessage } from "./render.js";

const $ = (id) => document.getElementById(id);
const state = {
  user: null, // id (string)
  users: new Map(), // id -> {id, name, colour, admin}
  names: new Map(), // id -> name, for mentions (users and the bot)
  commands: [],
  socket: null,
  formFor: null, // the command whose option fields are shown
  files: new Map(), // attachment option name -> File
  active: -1, // highlighted suggestion
  suggestions: [], // [{text, apply()}]
  view: 0, // counts user switches and reloads: late updates for an older view are dropped
};

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({ error: `The server answered ${response.status}.` }));
  if (!response.ok) throw new Error(data.error ?? `The server answered ${response.status}.`);
  return data;
}

let errorTimer = null;
function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => { box.hidden = true; }, 10000);
}

// messages

const context = {
  get users() { return state.users; },
  get names() { return state.names; },
  onClick: (messageId, customId, values, control) => click(messageId, customId, values, control),
};

function nearBottom(log) {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 120;
}

// Edits of one message are applied in order; a new revision replaces the old one only once its
// images are decoded (or after a short wait), so progress previews animate without a blank frame.
const pending = new Map(); // message id -> the promise of its last update

function showMessage(message) {
  const before = pending.get(message.id);
  if (!before && !document.querySelector(`article[data-message-id="${message.id}"]`)) {
    place(message); // a new message: at once, in order
    return;
  }
  const view = state.view;
  const done = (before ?? Promise.resolve()).then(() => update(message, view));
  pending.set(message.id, done);
  done.finally(() => { if (pending.get(message.id) === done) pending.delete(message.id); });
}

async function update(message, view) {
  const fresh = renderMessage(message, context);
  if (!message.deleted) {
    const images = [...fresh.querySelectorAll("img")].map((img) => img.decode().catch(() => {}));
    await Promise.race([Promise.all(images), new Promise((resolve) => setTimeout(resolve, 1500))]);
  }
  if (view === state.view) place(message, fresh); // not after a switch to another user
}

function place(message, fresh = renderMessage(message, context)) {
  const log = $("messages");
  const stick = nearBottom(log);
  const old = log.querySelector(`article[data-message-id="${message.id}"]`);
  if (message.deleted) {
    old?.remove();
    return;
  }
  if (old) {
    // The same <article> element stays: only its class, label and contents change.
    const focused = old.contains(document.activeElement) ? document.activeElement.textContent : null;
    old.className = fresh.className;
    old.setAttribute("aria-label", fresh.getAttribute("aria-label"));
    old.replaceChildren(...fresh.childNodes);
    if (focused) [...old.querySelectorAll("button")].find((b) => b.textContent === focused)?.focus();
  } else {
    const later = [...log.children].find((a) => BigInt(a.dataset.messageId) > BigInt(message.id));
    log.insertBefore(fresh, later ?? null);
  }
  if (stick) log.scrollTop = log.scrollHeight;
}

async function click(messageId, customId, values, control) {
  control.disabled = true;
  try {
    const answer = await api("/api/click", { user: state.user, message_id: messageId, custom_id: customId, values });
    handleAnswer(answer);
  } catch (error) {
    showError(error.message);
  } finally {
    if (control.isConnected) control.disabled = false;
  }
}

function handleAnswer(answer) {
  if (!answer.responded) showError("The application did not respond.");
  if (answer.modal) {
    openModal(answer.modal, async (values) => {
      handleAnswer(await api("/api/modal", { user: state.user, interaction_id: answer.interaction_id, values }));
    });
  }
  schedulePanel(1500);
}

// loading and live updates: the websocket opens first and the state is fetched once it is open,
// so every update after the state's snapshot arrives on the socket; those that arrive while the
// state loads are applied after it, in order (each carries the whole message, so the last wins).

async function load() {
  const wanted = new URLSearchParams(location.search).get("user") ?? localStorage.getItem("playground-user") ?? "";
  let data;
  try {
    data = await api(`/api/state?user=${encodeURIComponent(wanted || "alice")}`);
  } catch {
    data = await api("/api/state?user=alice");
  }
  apply(data); // shown at once; connect() fetches it again once live
  connect(data.user);
}

function apply(data) {
  state.user = data.user;
  state.users = new Map(data.users.map((u) => [u.id, u]));
  state.names = new Map([...data.users.map((u) => [u.id, u.name]), [data.bot.id, data.bot.name]]);
  state.commands = data.commands;
  $("channel-name").textContent = data.channel.name;
  document.title = `#${data.channel.name} · imaginebot playground`;
  const select = $("user");
  select.replaceChildren(...data.users.map((u) => {
    const option = new Option(u.name, u.id, false, u.id === data.user);
    option.title = u.admin ? "administrator" : "member";
    return option;
  }));
  $("balance").textContent = "…";
  const me = state.users.get(data.user);
  $("me-avatar").replaceWith(Object.assign(avatar(me.name, me.colour, true), { id: "me-avatar" }));
  const log = $("messages");
  state.view += 1;
  pending.clear();
  log.replaceChildren();
  for (const message of data.messages) showMessage(message);
  log.scrollTop = log.scrollHeight;
  schedulePanel(0);
}

function onUpdate(update) {
  if (update.type !== "message") return;
  showMessage(update.message);
  // New messages (results' receipts, refusals) may follow a balance change; progress edits
  // do not, and would run the background commands far too often.
  if (update.event === "create") schedulePanel(1500);
}

let retry = 500;
function connect(user) {
  document.body.dataset.live = "false"; // until this user's socket is open and their state shown
  state.socket?.close();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/api/ws?user=${encodeURIComponent(user)}`);
  state.socket = socket;
  let early = []; // updates that came before the state, or null once it is shown
  socket.addEventListener("open", async () => {
    let data;
    try {
      data = await api(`/api/state?user=${encodeURIComponent(user)}`);
    } catch {
      socket.close(); // retried by the close handler
      return;
    }
    if (state.socket !== socket) return; // switched meanwhile
    apply(data);
    const queued = early;
    early = null;
    queued.forEach(onUpdate);
    retry = 500;
    document.body.dataset.live = "true";
  });
  socket.addEventListener("message", (event) => {
    if (state.socket !== socket) return;
    const update = JSON.parse(event.data);
    if (early) early.push(update);
    else onUpdate(update);
  });
  socket.addEventListener("close", () => {
    if (state.socket !== socket) return; // replaced on purpose
    document.body.dataset.live = "false";
    setTimeout(() => { if (state.socket === socket) connect(user); }, retry);
    retry = Math.min(retry * 2, 10000);
  });
}

function switchUser(id) {
  const name = state.users.get(id)?.name ?? id;
  localStorage.setItem("playground-user", name);
  const url = new URL(location.href);
  url.searchParams.set("user", name);
  history.replaceState(null, "", url);
  resetComposer(); // the new user may have other commands
  connect(id);
}

// the side panel: the user's /credits and the admin's /jobs list, run in the background

const PANEL_EVERY_MS = 15000; // the queue moves on without new messages
let panelTimer = null;
let panelBusy = false;
function schedulePanel(delay) {
  if (panelTimer !== null) return;
  panelTimer = setTimeout(async () => {
    panelTimer = null;
    if (panelBusy) return schedulePanel(1000);
    panelBusy = true;
    const user = state.user;
    try {
      const panel = await api("/api/panel", { user });
      if (user !== state.user) return;
      $("balance").textContent = panel.balance ?? "?";
      const queue = panel.queue ?? ["The queue is unavailable."];
      $("queue").replaceChildren(...queue.map((line) => {
        const item = document.createElement("li");
        item.innerHTML = markdown(line, state.names);
        return item;
      }));
    } catch (error) {
      $("balance").textContent = "?";
    } finally {
      panelBusy = false;
    }
  }, delay);
}

// the message box

function resetComposer() {
  clearTimeout(completionTimer);
  $("message").value = "";
  state.files.clear();
  showOptions(null);
  hideSuggestions();
  autosize();
}

function autosize() {
  const box = $("message");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight, 200)}px`;
}

function hideSuggestions() {
  state.suggestions = [];
  state.active = -1;
  const list = $("suggestions");
  list.hidden = true;
  list.replaceChildren();
  $("message").setAttribute("aria-expanded", "false");
  $("message").removeAttribute("aria-activedescendant");
}

function showSuggestions(items) {
  if (!items.length) return hideSuggestions();
  state.suggestions = items;
  state.active = 0;
  const list = $("suggestions");
  list.replaceChildren(...items.map((item, index) => {
    const option = document.createElement("div");
    option.id = `suggestion-${index}`;
    option.setAttribute("role", "option");
    option.className = "suggestion";
    option.append(Object.assign(document.createElement("span"), { className: "suggestion-name", textContent: item.text }));
    if (item.detail) option.append(Object.assign(document.createElement("span"), { className: "suggestion-detail", textContent: ` ${item.detail}` }));
    option.addEventListener("mousedown", (event) => {
      event.preventDefault(); // keep the focus in the message box
      choose(index);
    });
    return option;
  }));
  list.hidden = false;
  $("message").setAttribute("aria-expanded", "true");
  highlight(0);
}

function highlight(index) {
  state.active = index;
  const options = [...$("suggestions").children];
  options.forEach((o, i) => o.setAttribute("aria-selected", String(i === index)));
  if (options[index]) {
    $("message").setAttribute("aria-activedescendant", options[index].id);
    options[index].scrollIntoView({ block: "nearest" });
  }
}

function choose(index) {
  const item = state.suggestions[index];
  hideSuggestions();
  item?.apply();
  $("message").focus();
}

function setText(text) {
  const box = $("message");
  box.value = text;
  box.setSelectionRange(text.length, text.length);
  autosize();
  onText();
}

let completionTimer = null;
function onText() {
  const text = $("message").value;
  clearTimeout(completionTimer);
  if (!text.startsWith("/")) {
    hideSuggestions();
    showOptions(null);
    return;
  }
  const parsed = parseCommand(text, state.commands);
  if (!parsed) {
    showOptions(null);
    showSuggestions(matchCommands(text, state.commands).map((c) => ({
      text: `/${c.name}`,
      detail: [c.options.map((o) => o.name).join(" "), c.description].filter(Boolean).join(" — "),
      apply: () => setText(`/${c.name} `),
    })));
    return;
  }
  showOptions(parsed.command);
  fillOptions(parsed);
  const option = parsed.command.options.find((o) => o.name === parsed.last);
  if (option?.autocomplete) {
    completionTimer = setTimeout(() => suggestValues(parsed, option, text), 200);
  } else if (option?.choices?.length && text.endsWith(parsed.options.get(option.name) ?? "")) {
    const typed = (parsed.options.get(option.name) ?? "").toLowerCase();
    const matches = option.choices.filter((c) => c.name.toLowerCase().startsWith(typed) && c.name.toLowerCase() !== typed);
    showSuggestions(matches.map((c) => ({ text: c.name, apply: () => setOption(parsed, option.name, String(c.value)) })));
  } else {
    hideSuggestions();
  }
}

async function suggestValues(parsed, option, typed) {
  if ($("message").value !== typed) return;
  try {
    const answer = await api("/api/autocomplete", {
      user: state.user, name: parsed.command.name,
      options: Object.fromEntries(parsed.options), focused: option.name,
    });
    if ($("message").value !== typed) return; // typed on meanwhile
    showSuggestions(answer.choices.map((c) => ({ text: c.name, apply: () => setOption(parsed, option.name, String(c.value)) })));
    fillDatalist(option.name, answer.choices);
  } catch (error) {
    showError(error.message);
  }
}

function setOption(parsed, name, value) {
  const options = new Map(parsed.options);
  options.set(name, value);
  setText(`${formatCommand(parsed.command, options)} `);
}

// the option form: one labelled field per option, kept in step with the typed text

const TYPES = { STRING: 3, INTEGER: 4, BOOLEAN: 5, USER: 6, CHANNEL: 7, NUMBER: 10, ATTACHMENT: 11 };

function showOptions(command) {
  const fieldset = $("options");
  if (!command || !command.options.length) {
    fieldset.hidden = true;
    $("option-fields").replaceChildren();
    state.formFor = null;
    return;
  }
  fieldset.hidden = false;
  if (state.formFor === command.name) return;
  state.formFor = command.name;
  state.files.clear();
  $("options-legend").textContent = `/${command.name}: ${command.description}`;
  $("option-fields").replaceChildren(...command.options.map((option) => optionField(command, option)));
}

function optionField(command, option) {
  const id = `option-${option.name}`;
  const wrapper = document.createElement("div");
  wrapper.className = "option-field";
  const label = Object.assign(document.createElement("label"), { htmlFor: id, textContent: option.name });
  let input;
  const pick = (values) => {
    input = document.createElement("select");
    input.append(new Option("", ""), ...values.map(([text, value]) => new Option(text, value)));
  };
  if (option.choices?.length) pick(option.choices.map((c) => [c.name, String(c.value)]));
  else if (option.type === TYPES.BOOLEAN) pick([["true", "true"], ["false", "false"]]);
  else if (option.type === TYPES.USER) pick([...state.users.values()].map((u) => [u.name, u.name]));
  else if (option.type === TYPES.ATTACHMENT) {
    input = Object.assign(document.createElement("input"), { type: "file" });
  } else {
    input = document.createElement("input");
    if (option.type === TYPES.INTEGER || option.type === TYPES.NUMBER) {
      input.type = "number";
      input.step = option.type === TYPES.INTEGER ? "1" : "any";
      if (option.min_value !== undefined) input.min = option.min_value;
      if (option.max_value !== undefined) input.max = option.max_value;
    } else {
      input.type = "text";
      if (option.max_length) input.maxLength = option.max_length;
    }
    if (option.autocomplete) {
      const list = Object.assign(document.createElement("datalist"), { id: `${id}-choices` });
      input.setAttribute("list", list.id);
      wrapper.append(list);
      input.addEventListener("focus", () => {
        const parsed = parseCommand($("message").value, state.commands);
        if (parsed) fetchDatalist(parsed, option);
      });
    }
  }
  input.id = id;
  input.name = option.name;
  input.required = Boolean(option.required);
  const note = Object.assign(document.createElement("small"), {
    id: `${id}-note`, className: "option-note",
    textContent: `${option.description ?? ""}${option.required ? " (required)" : ""}`,
  });
  input.setAttribute("aria-describedby", note.id);
  input.addEventListener(input.type === "file" ? "change" : "input", () => {
    if (input.type === "file") {
      if (input.files[0]) state.files.set(option.name, input.files[0]);
      else state.files.delete(option.name);
      return;
    }
    const parsed = parseCommand($("message").value, state.commands) ?? { command, options: new Map() };
    const options = new Map(parsed.options);
    options.set(option.name, input.value);
    const box = $("message");
    box.value = formatCommand(command, options);
    autosize();
    if (option.autocomplete) fetchDatalist({ command, options }, option);
  });
  wrapper.prepend(label, input, note);
  return wrapper;
}

async function fetchDatalist(parsed, option) {
  try {
    const answer = await api("/api/autocomplete", {
      user: state.user, name: parsed.command.name,
      options: Object.fromEntries(parsed.options), focused: option.name,
    });
    fillDatalist(option.name, answer.choices);
  } catch (error) {
    showError(error.message);
  }
}

function fillDatalist(name, choices) {
  const list = document.getElementById(`option-${name}-choices`);
  list?.replaceChildren(...choices.map((c) => new Option(c.name, String(c.value))));
}

function fillOptions(parsed) {
  for (const option of parsed.command.options) {
    const input = document.getElementById(`option-${option.name}`);
    if (!input || input === document.activeElement || input.type === "file") continue;
    input.value = parsed.options.get(option.name) ?? "";
  }
}

async function fileValue(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return { filename: file.name, data: btoa(binary) };
}

async function send() {
  const text = $("message").value.trim();
  if (!text) return;
  if (!text.startsWith("/")) {
    showError("Only slash commands reach the bot here: type / to see them.");
    return;
  }
  const parsed = parseCommand(text, state.commands);
  if (!parsed) {
    const name = text.slice(1).split(/\s/)[0];
    const partial = findCommand(text, state.commands) ?? matchCommands(text, state.commands)[0];
    showError(partial ? `/${name} needs more: pick /${partial.name} from the list.` : `There is no command /${name}.`);
    return;
  }
  const options = Object.fromEntries([...parsed.options].filter(([, v]) => v !== ""));
  for (const [name, file] of state.files) options[name] = await fileValue(file);
  $("send").disabled = true;
  try {
    const answer = await api("/api/command", { user: state.user, name: parsed.command.name, options });
    resetComposer();
    handleAnswer(answer);
  } catch (error) {
    showError(error.message);
  } finally {
    $("send").disabled = false;
  }
}

function onKey(event) {
  const open = !$("suggestions").hidden && state.suggestions.length;
  if (open && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
    event.preventDefault();
    const step = event.key === "ArrowDown" ? 1 : -1;
    highlight((state.active + step + state.suggestions.length) % state.suggestions.length);
  } else if (open && (event.key === "Tab" || (event.key === "Enter" && !event.shiftKey))) {
    event.preventDefault();
    choose(Math.max(state.active, 0));
  } else if (open && event.key === "Escape") {
    event.preventDefault();
    hideSuggestions();
  } else if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    send();
  }
}

function start() {
  const box = $("message");
  box.addEventListener("input", () => { autosize(); onText(); });
  box.addEventListener("keydown", onKey);
  box.addEventListener("blur", () => setTimeout(hideSuggestions, 150));
  $("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
  $("user").addEventListener("change", (event) => switchUser(event.target.value));
  $("refresh-panel").addEventListener("click", () => schedulePanel(0));
  setInterval(() => { if (!document.hidden) schedulePanel(0); }, PANEL_EVERY_MS);
  load().then(() => { document.body.dataset.ready = "true"; }).catch((error) => showError(error.message));
}

start();
