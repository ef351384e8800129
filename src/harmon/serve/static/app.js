// The page of `harmon serve`: a client of the server's own OpenAI-shaped API, streamed as server-sent events.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let history = [];      // the conversation, as /v1/chat/completions messages
let attached = [];     // data: URLs of the images for the next message

// Server-sent events of a fetch response, one parsed JSON object at a time, until [DONE].
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

async function generate(event) {
  event.preventDefault();
  const button = $("generate"), status = $("gen-status"), bar = $("gen-progress");
  button.disabled = true; bar.value = 0; status.textContent = "waiting…"; status.classList.remove("error");
  $("results").replaceChildren();
  const body = {
    model: info.model, prompt: $("prompt").value, n: number("n") || 1, stream: true, response_format: "b64_json",
    seed: number("seed"), guidance_scale: number("guidance"), num_iter: number("num-iter"),
    preset: $("preset").value || undefined,
  };
  try {
    const response = await post("/v1/images/generations", body);
    let count = 0;
    for await (const e of events(response)) {
      if (e.type === "image_generation.progress") {
        bar.value = e.step / e.total; status.textContent = `step ${e.step} of ${e.total}`;
      } else if (e.type === "image_generation.completed") {
        addImage(e.b64_json, count++);
      } else if (e.error) {
        throw new Error(e.error.message);
      }
    }
    bar.value = 1; status.textContent = `done: ${count} image${count === 1 ? "" : "s"}`;
  } catch (err) {
    status.textContent = err.message; status.classList.add("error");
  } finally {
    button.disabled = false;
  }
}

function addImage(b64, index) {
  const url = `data:image/png;base64,${b64}`;
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.className = "result"; img.src = url; img.alt = $("prompt").value;
  const link = document.createElement("a");
  link.href = url; link.download = `harmon-${index}.png`; link.textContent = "Download";
  figure.append(img, link);
  $("results").append(figure);
}

function bubble(role, text, images = []) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  for (const url of images) {
    const img = document.createElement("img"); img.src = url; div.append(img);
  }
  div.append(document.createTextNode(text));
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

function attach(event) {
  for (const file of event.target.files) {
    const reader = new FileReader();
    reader.onload = () => {
      attached.push(reader.result);
      const img = document.createElement("img"); img.src = reader.result; $("attached").append(img);
    };
    reader.readAsDataURL(file);
  }
  event.target.value = "";
}

async function send(event) {
  event.preventDefault();
  const text = $("chat-text").value.trim();
  if (!text) return;
  const content = attached.map((url) => ({ type: "image_url", image_url: { url } }));
  content.push({ type: "text", text });
  bubble("user", text, attached);
  attached = []; $("attached").replaceChildren(); $("chat-text").value = "";
  const answer = bubble("assistant", "");
  const body = { model: info.model, messages: [...history, { role: "user", content }], stream: true };
  $("send").disabled = true;
  try {
    const response = await post("/v1/chat/completions", body);
    let reply = "";
    for await (const e of events(response)) {
      if (e.error) throw new Error(e.error.message);
      const delta = e.choices && e.choices[0] && e.choices[0].delta;
      if (delta && delta.content) { reply += delta.content; answer.textContent = reply; }
    }
    history.push({ role: "user", content }, { role: "assistant", content: reply });
  } catch (err) {
    answer.textContent = err.message; answer.classList.add("error");
  } finally {
    answer.dataset.done = "1";
    $("send").disabled = false;
  }
}

function newChat() {
  history = []; attached = [];
  $("log").replaceChildren(); $("attached").replaceChildren();
}

async function start() {
  info = await (await fetch("/api/info")).json();
  $("model").textContent = `${info.model} · ${info.defaults.image_size} px`;
  $("guidance").placeholder = info.defaults.guidance_scale;
  $("num-iter").placeholder = info.defaults.num_iter;
  $("num-iter").max = info.limits.max_num_iter;
  $("n").max = info.limits.max_n;
  for (const name of info.presets) {
    const option = document.createElement("option"); option.value = option.textContent = name;
    $("preset").append(option);
  }
  $("gen-form").addEventListener("submit", generate);
  $("chat-form").addEventListener("submit", send);
  $("chat-image").addEventListener("change", attach);
  $("new-chat").addEventListener("click", newChat);
  document.body.dataset.ready = "1";
}

start();
