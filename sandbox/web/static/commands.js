// What a person types after "/": which command, and its named options.
//   "/imagine a red fox"                              -> prompt = "a red fox"
//   "/imagine prompt: a fox aspect: 16:9 steps: 20"   -> three options
//   "/credits-admin grant user: bob amount: 5"        -> a subcommand with two options

// The command whose name the text starts with (longest first: "credits-admin grant").
export function findCommand(text, commands) {
  const body = text.replace(/^\//, "");
  const byLength = [...commands].sort((a, b) => b.name.length - a.name.length);
  return byLength.find((c) => body === c.name || body.startsWith(`${c.name} `)) ?? null;
}

// The commands a partly typed name may still become.
export function matchCommands(text, commands) {
  const typed = text.replace(/^\//, "").trimStart().toLowerCase();
  return commands.filter((c) => c.name.startsWith(typed) || (typed && c.name.includes(typed)));
}

// {command, options: Map name -> text, last: name of the option typed last (or null)}.
export function parseCommand(text, commands) {
  const command = findCommand(text, commands);
  if (!command) return null;
  const rest = text.replace(/^\//, "").slice(command.name.length);
  const names = command.options.map((o) => o.name);
  const options = new Map();
  let last = null;
  if (!names.length) return { command, options, last };
  const marker = new RegExp(`(?:^|\\s)(${names.map(escapeRegExp).join("|")}):`, "g");
  const found = [...rest.matchAll(marker)];
  const leading = rest.slice(0, found.length ? found[0].index : rest.length).trim();
  if (leading) {
    const first = command.options.find((o) => o.required) ?? command.options[0];
    options.set(first.name, leading);
    last = first.name;
  }
  found.forEach((match, i) => {
    const start = match.index + match[0].length;
    const end = i + 1 < found.length ? found[i + 1].index : rest.length;
    options.set(match[1], rest.slice(start, end).trim());
    last = match[1];
  });
  return { command, options, last };
}

export function formatCommand(command, options) {
  const parts = [`/${command.name}`];
  for (const option of command.options) {
    const value = options.get(option.name);
    if (value !== undefined && value !== "") parts.push(`${option.name}: ${value}`);
  }
  return parts.join(" ");
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
