import ArgumentParser
import AttentionTensor
import AttnServerCore
import Foundation
import LongAttention
import LongContextModel
import Logging

/// `attn-server`: an OpenAI-compatible HTTP server over one model (SPEC.md, "Serving").
@main
struct AttnServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attn-server",
        abstract: "Serve a model over OpenAI's HTTP API (/v1/models, /v1/completions, /v1/chat/completions, /health, /metrics).")

    @Option(help: "A GGUF file or a Hugging Face folder.") var model: String
    @Option(help: "The address to listen on.") var host = "127.0.0.1"
    @Option(help: "The port (0: a free one; the real one is printed).") var port = 8080
    @Option(help: "Sequences decoding at once.") var parallel = 1
    @Option(help: "The longest prompt + completion in tokens (default: the model's, at most 4096).") var ctx: Int?
    @Option(help: "KV cache type: f32, bf16, f16 or int8.") var kvType = "f32"
    @Option(help: "Compute threads (default: all cores).") var threads: Int?
    @Option(help: "Requests that may wait for a sequence (then 429).") var queue = 16
    @Option(help: "The largest request body in bytes (413 beyond).") var maxBodyBytes = 8 << 20
    @Option(help: "The KV caches' budget in MiB (default: --parallel caches of --ctx positions).") var kvBudgetMb: Int?
    @Option(help: "Prompt tokens prefilled per scheduler round.") var prefillChunk = 256
    @Option(help: "Finished sequences' KV caches kept for prompts that start with the same tokens (0, the default: none); they use the budget's spare bytes only. A reused prefix changes logits at float rounding, which under --matmul fast can change a greedy text.")
    var prefixCache = 0
    @Option(help: "Log level (trace, debug, info, notice, warning, error).") var logLevel = "info"
    @Option(help: "exact (dequantised float32 products) or fast (the quantised kernels, as attn lm generate).") var matmul = "fast"
    @Option(help: "Quantise a checkpoint folder's float weight matrices at load: q8_0 or q4_0 (as attn lm generate --quantize).") var quantize: String?
    @Option(help: "StreamingLLM attention sinks (with --attention-window): the first S positions stay in every sequence's KV cache.")
    var sinks: Int?
    @Option(help: "StreamingLLM window: full layers see the sinks and the last W positions, so a sequence's KV cache holds S + W positions whatever --ctx is (as attn lm generate --attention-window).")
    var attentionWindow: Int?
    @Option(help: "A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) made for --model, applied unmerged to the projections it adapts.")
    var adapter: String?

    func validate() throws {
        guard KVCacheType(rawValue: kvType) != nil else { throw ValidationError("--kv-type must be f32, bf16, f16 or int8") }
        guard (0...65535).contains(port) else { throw ValidationError("--port must lie in 0...65535") }
        guard parallel >= 1, queue >= 0, prefixCache >= 0, maxBodyBytes >= 1, prefillChunk >= 1 else {
            throw ValidationError("--parallel, --max-body-bytes and --prefill-chunk must be >= 1, --queue and --prefix-cache >= 0")
        }
        if let ctx, ctx < 2 { throw ValidationError("--ctx must be >= 2") }
        if let threads, threads < 1 { throw ValidationError("--threads must be >= 1") }
        _ = try quantizeType()
        _ = try streaming()
    }

    /// The sinks + window, if asked for (``ContextExtension`` checks the values).
    func streaming() throws -> ContextExtension? {
        if sinks == nil && attentionWindow == nil { return nil }
        do {
            return try ContextExtension(sinks: sinks ?? (attentionWindow != nil ? 0 : nil), window: attentionWindow)
        } catch {
            throw ValidationError("\(error)")
        }
    }

    func quantizeType() throws -> GGMLType? {
        guard let quantize else { return nil }
        guard let t = GGMLType.quantizable(named: quantize) else {
            throw ValidationError("--quantize must be q8_0 or q4_0, got \(quantize)")
        }
        return t
    }

    func run() async throws {
        var logger = Logger(label: "attn-server")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        guard let mode = MatmulMode(rawValue: matmul) else { throw ValidationError("--matmul must be exact or fast, got \(matmul)") }
        var lm = try LanguageModel(path: model, matmul: mode, quantize: try quantizeType())
        if let ext = try streaming() {
            // The sequences' caches are made from the model's config: its sinks and window bound them.
            lm = LanguageModel(model: try lm.model.with(config: try ext.apply(to: lm.model.config)), codec: lm.codec,
                               chatTemplate: lm.chatTemplate, name: lm.name)
        }
        var adapted = ""
        if let adapter {
            // Unmerged (x·Wᵀ + s·(x·Aᵀ)·Bᵀ): a GGUF model's weights are quantised and cannot take W + s·B·A.
            do {
                let lora = try LoRAAdapter(directory: adapter, model: lm.model)
                lm = LanguageModel(model: try lm.model.attaching(lora), codec: lm.codec, chatTemplate: lm.chatTemplate, name: lm.name)
                adapted = ", LoRA adapter \(adapter) (r \(lora.rank), alpha \(lora.alpha), \(lora.adaptedWeights.count) projections: "
                    + lora.targetModules.joined(separator: ",") + ")"
            } catch {
                throw StartupError(message: "--adapter \(adapter) does not apply to \(model): \(error)")
            }
        }
        var options = ServerOptions()
        options.host = host
        options.port = port
        options.parallel = parallel
        options.queue = queue
        options.context = ctx ?? min(4096, lm.model.config.maxPositionEmbeddings)
        options.cacheType = KVCacheType(rawValue: kvType)!
        options.threads = threads
        options.maxBodyBytes = maxBodyBytes
        options.kvBudgetBytes = kvBudgetMb.map { $0 << 20 }
        options.prefillChunk = prefillChunk
        options.prefixCacheEntries = prefixCache
        let window = lm.model.config.streaming.map { ", sinks \($0.sinks) + window \($0.window)" } ?? ""
        logger.info("serving \(lm.name) (\(lm.model.config.layers) layers, context \(options.context), \(parallel) sequences, KV \(kvType)\(window)\(adapted))")
        try await OpenAIServer.run(model: lm, options: options, logger: logger)
    }
}

/// A setting that cannot be used, found while loading (printed as it is, without the usage text).
struct StartupError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}
