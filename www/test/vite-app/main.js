// What a web developer writes: import the package by name, load a model, chat.
import { createEngine, listCachedModels } from 'webqwen';

const out = document.getElementById('out');

// The test calls this with a model directory URL and reads back plain data.
window.greedy = async ({ model, prompt, maxTokens }) => {
  const engine = await createEngine({ model });
  try {
    const chunks = [];
    const stream = await engine.chat.completions.create({
      messages: [{ role: 'user', content: prompt }],
      stream: true, temperature: 0, max_tokens: maxTokens, enable_thinking: false,
    });
    let text = '';
    let last = null;
    for await (const chunk of stream) {
      chunks.push(chunk.choices[0].delta);
      text += chunk.choices[0].delta.content ?? '';
      last = chunk;
    }
    out.textContent = text;
    return { text, chunks: chunks.length, finish: last.choices[0].finish_reason, usage: last.usage, cached: await listCachedModels() };
  } finally {
    await engine.unload();
  }
};
window.appReady = true;
out.textContent = 'ready';
