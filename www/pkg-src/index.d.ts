// Types of the webqwen package (Qwen3 on WebGPU, in a Web Worker).

/**
 * How a file was verified when it was downloaded: its bytes matched a sha256 or a git blob
 * id (hub listings, for files not in LFS) that its source published, or the source
 * published no checksum and only its size was checked ('size-only'). Cached files are
 * checked against the sha256 recorded at download either way.
 */
export type FileVerification = 'sha256' | 'git-sha1' | 'size-only';

export interface LoadProgress {
  /**
   * 'download': bytes coming from the network; 'cache': bytes read back from storage;
   * 'verify': hashing weights cached by an earlier version of webqwen before they are used
   * (once); 'compile': all weights are on the GPU, the engine is building its pipelines;
   * 'ready': done.
   */
  phase: 'download' | 'cache' | 'verify' | 'compile' | 'ready';
  /** The file being read or downloaded (null for 'compile' / 'ready'). */
  file: string | null;
  /** Weight bytes delivered to the GPU so far (from cache and network together). */
  loaded: number;
  /** All weight bytes of the model; 0 while still unknown (small files, headers). */
  total: number;
  /** Recent throughput of the current phase, bytes per second. */
  bytesPerSecond: number;
  /** Files so far accepted without a checksum published by their source (size only). */
  sizeOnly: string[];
}

export interface CreateEngineOptions {
  /**
   * A Hugging Face repo id ("Qwen/Qwen3-0.6B-MLX-4bit"), or the URL of a model directory
   * ("https://host/models/qwen3/", "/models/qwen3", "./qwen3"; relative URLs resolve
   * against the page).
   */
  model: string;
  /**
   * Hub endpoint for repo ids. Default "https://huggingface.co". Each endpoint has its own
   * cache entry: a repo from a mirror never reads or replaces the one from huggingface.co.
   */
  endpoint?: string;
  onProgress?: (progress: LoadProgress) => void;
  /** Aborts the download/load; createEngine then rejects with AbortError. */
  signal?: AbortSignal;
  /** KV-cache length in tokens (the engine's default when omitted). */
  context?: number;
  /** Split tensors to at most this many bytes per binding (default: the adapter's limit). */
  maxStorageBinding?: number;
  /**
   * How the KV cache stores keys and values: 'f16' (default: half the memory, needs no
   * shader-f16) or 'f32'. Attention computes in f32 either way.
   */
  kvCache?: 'f16' | 'f32';
  /**
   * Where weights are cached: 'auto' (OPFS, else the Cache API, else nothing), 'opfs',
   * 'cache', or 'none' (always download). Default 'auto'.
   */
  storage?: 'auto' | 'opfs' | 'cache' | 'none';
}

export type Role = 'system' | 'user' | 'assistant' | 'tool';

export interface ChatMessage {
  role: Role;
  content: string | Array<{ type: 'text'; text: string }> | null;
  /** Earlier answers' thinking; the Qwen3 template drops it from the history. */
  reasoning_content?: string;
  name?: string;
  tool_calls?: unknown[];
  tool_call_id?: string;
}

export interface ChatCompletionRequest {
  messages: ChatMessage[];
  stream?: boolean;
  max_tokens?: number;
  /** Alias of max_tokens. */
  max_completion_tokens?: number;
  /** 0 = greedy. Defaults come from the model's generation_config.json. */
  temperature?: number;
  top_p?: number;
  top_k?: number;
  min_p?: number;
  presence_penalty?: number;
  repetition_penalty?: number;
  seed?: number;
  stop?: string | string[];
  /** Qwen3 thinking mode (default true, as in the model's chat template). */
  enable_thinking?: boolean;
  /** vLLM-style alias: `{enable_thinking}`. */
  chat_template_kwargs?: { enable_thinking?: boolean };
  n?: 1;
  /** Stops the generation; the result (or last chunk) then has finish_reason 'abort'. */
  signal?: AbortSignal;
}

export type FinishReason = 'stop' | 'length' | 'abort';

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  extra: {
    /** Seconds from the request to its end, as the page sees them. */
    e2e_latency_s: number;
    /** Seconds from the request to the first text, as the page sees them. */
    time_to_first_token_s?: number;
    /** Prompt tokens per second of prefill, as the engine measured it. */
    prefill_tokens_per_s?: number;
    /** Generated tokens per second after the first, as the engine measured it. */
    decode_tokens_per_s?: number;
    /** Timings as measured by the engine itself, when it reports them. */
    engine?: Record<string, unknown>;
  };
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: [{
    index: 0;
    message: { role: 'assistant'; content: string; reasoning_content?: string };
    finish_reason: FinishReason;
    logprobs: null;
  }];
  usage: CompletionUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: [{
    index: 0;
    /** Thinking arrives as reasoning_content, the answer as content. */
    delta: { role?: 'assistant'; content?: string; reasoning_content?: string };
    /** null until the last chunk. */
    finish_reason: FinishReason | null;
    logprobs: null;
  }];
  /** Only on the last chunk. */
  usage?: CompletionUsage;
}

/** Breaking out of `for await` cancels the generation. */
export interface ChatCompletionStream extends AsyncIterableIterator<ChatCompletionChunk> {}

export interface EngineInfo {
  /** The model id (repo id or absolute directory URL). */
  model: string;
  /** The URL the model's files were fetched under (".../resolve/main/" for hub repos). */
  source: string;
  /** The hub endpoint (null for a URL model). */
  endpoint: string | null;
  /** The origin the files came from, e.g. "https://huggingface.co". */
  origin: string;
  /** Each file of the model: its size and how it was verified when downloaded. */
  files: Record<string, { size: number | null; verified: FileVerification | null }>;
  /** The files accepted without a published checksum (size only); empty when all were verified. */
  sizeOnly: string[];
  /** Where the weights are cached. */
  storage: 'opfs' | 'cache' | 'none';
  /** What the wasm module reports about the adapter. */
  gpu: { adapter: string; backend: string; features: string[]; limits: Record<string, number> };
  /** The engine's own report: adapter, features, limits, model shapes, memory. */
  engine: Record<string, unknown>;
  /** Whether navigator.storage.persist() was granted (null: not answered yet / unsupported). */
  persistedStorage: boolean | null;
}

export interface Engine {
  readonly model: string;
  /** The hub endpoint the files came from (null for a URL model). */
  readonly endpoint: string | null;
  /** The origin the files came from, e.g. "https://huggingface.co". */
  readonly origin: string;
  readonly chat: {
    readonly completions: {
      create(request: ChatCompletionRequest & { stream: true }): Promise<ChatCompletionStream>;
      create(request: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
      create(request: ChatCompletionRequest): Promise<ChatCompletion | ChatCompletionStream>;
    };
  };
  info(): Promise<EngineInfo>;
  /** Frees GPU memory and stops the worker. */
  unload(): Promise<void>;
}

export function createEngine(options: CreateEngineOptions): Promise<Engine>;

export interface ModelSource {
  /** The normalised model id (a URL loses its trailing slash). */
  model: string;
  kind: 'hub' | 'url';
  /** The hub endpoint (null for a URL model). */
  endpoint: string | null;
  /** The origin the files would come from. */
  origin: string;
  /** A repo from https://huggingface.co. */
  official: boolean;
}

/**
 * Where `model` would be loaded from, without loading anything. Throws TypeError for an
 * invalid id, URL or endpoint. An app that takes a model or endpoint from a link should show
 * this to the user and load only once they agree.
 */
export function resolveModel(model: string, options?: { endpoint?: string }): ModelSource;

export interface CachedModel {
  /**
   * The model id as given to createEngine (null if its manifest is unreadable or does not
   * match the entry: such entries can only be deleted).
   */
  model: string | null;
  /** The hub endpoint its files came from (null for URL models and unreadable entries). */
  endpoint: string | null;
  /** The origin its files came from (null when unknown). */
  origin: string | null;
  /** The storage directory / key prefix name. */
  key: string;
  storage: 'opfs' | 'cache';
  /** Bytes stored now. */
  bytes: number;
  /** Bytes of the complete model, once known. */
  totalBytes: number | null;
  /** Every file downloaded and verified. */
  complete: boolean;
  /** ISO date of the last change. */
  updated: string | null;
}

/** The same repo id from two endpoints is two entries. */
export function listCachedModels(): Promise<CachedModel[]>;
/**
 * Deletes a repo id (from `options.endpoint`, default huggingface.co) or URL, or an entry of
 * listCachedModels(). Resolves to whether anything was deleted. Rejects while the model is
 * being loaded.
 */
export function deleteCachedModel(model: string | CachedModel, options?: { endpoint?: string }): Promise<boolean>;

export class WebQwenError extends Error {
  name: string;
}
/** No WebGPU here (browser, settings, insecure context), or no adapter. */
export class WebGPUUnavailableError extends WebQwenError {
  name: 'WebGPUUnavailableError';
}
/** The GPU's buffer limits cannot hold this model with this context length. */
export class LimitsTooSmallError extends WebQwenError {
  name: 'LimitsTooSmallError';
}
/** Not enough storage for the model. Fields in bytes when known from the estimate. */
export class QuotaExceededError extends WebQwenError {
  name: 'QuotaExceededError';
  needed?: number;
  available?: number;
  quota?: number;
  usage?: number;
}
/** Offline, server errors, access denied. Partial downloads are kept and resume. */
export class NetworkError extends WebQwenError {
  name: 'NetworkError';
  url?: string;
  status?: number;
}
/** Missing, malformed or unsupported model files, or a checksum mismatch. */
export class BadModelError extends WebQwenError {
  name: 'BadModelError';
  file?: string;
  url?: string;
}
export class AbortError extends WebQwenError {
  name: 'AbortError';
}
