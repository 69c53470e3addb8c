import ArgumentParser
import AttentionTensor
import AttnCommands
import DistributedModel
import Foundation
import LongContextModel
import SwiftMPI

/// The options of `attn dist generate|ppl` besides attn lm's: the wait bound and the test hooks.
struct DistModelOptions: ParsableArguments {
    @Option(help: "Seconds any wait for another rank may last before every rank is ended (MPI_Abort).")
    var timeout: Double = 300
    @Option(help: "Output (rank 0): every rank's prefill and decode statistics as JSON.") var distStats: String?
    @Option(help: .hidden) var debugKillRank: Int?
    @Option(help: .hidden) var debugHangRank: Int?
    @Option(help: .hidden) var debugFailRank: Int?

    func validate() throws {
        if !(timeout > 0) { throw ValidationError("--timeout must be positive") }
    }
}

/// Loads the model on every rank (each maps the same file: one page-cache copy per machine).
func loadDistributed(_ comm: Communicator, threads: Int?, _ load: () throws -> LanguageModel) throws -> (LanguageModel, DistributedCausalLM) {
    try agree(comm) {
        let lm = try load()
        return (lm, try DistributedCausalLM(model: lm.model, comm: comm, threads: threads ?? 1))
    }
}

/// Every rank's statistics (a collective), as rows on rank 0.
/// Every rank's figures (``gatherModelStats``), written by rank 0 as JSON to `path` when one is given.
func writeModelStats(_ dist: DistributedCausalLM, cacheBytes: Int, to path: String?, comm: Communicator) throws {
    let rows = try gatherModelStats(dist, cacheBytes: cacheBytes, comm: comm)
    try agree(comm) {
        if comm.rank == 0, let path {
            let data = try JSONSerialization.data(withJSONObject: rows, options: [.prettyPrinted, .sortedKeys])
            try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        }
    }
}

func gatherModelStats(_ dist: DistributedCausalLM, cacheBytes: Int, comm: Communicator) throws -> [[String: Double]] {
    let p = dist.prefillStatistics, d = dist.decodeStatistics
    let names = ["localTokens", "tokens", "prefillSeconds", "ringSeconds", "ringWaitSeconds", "ringBytes", "haloSeconds", "haloBytes",
                 "windowedSeconds", "decodeSteps", "decodeSeconds", "gatherSeconds", "gatherCalls", "floatsSent", "kvCacheBytes"]
    let mine: [Double] = [Double(p.localTokens), Double(p.tokens), p.seconds, p.ringSeconds, p.ringWaitSeconds, Double(p.ringBytes),
                          p.haloSeconds, Double(p.haloBytes), p.windowedSeconds, Double(d.steps), d.seconds, d.gatherSeconds,
                          Double(d.gatherCalls), Double(d.floatsSent), Double(cacheBytes)]
    let all = try comm.allgather(mine)
    return (0..<comm.size).map { r in
        var row = ["rank": Double(r)]
        for (i, n) in names.enumerated() { row[n] = all[r * names.count + i] }
        return row
    }
}

struct DistGenerate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "attn lm generate across ranks: the prompt prefilled sequence-parallel (zigzag shards; ring attention on full layers, a halo exchange on sliding ones), then decoded tensor-parallel on the position-sharded KV cache. Rank 0 prints and writes the files.",
        discussion: "Same options and outputs as attn lm generate. The prompt needs at least 2P tokens. --threads is per rank (default 1).")
    @OptionGroup var arguments: GenerateArguments
    @OptionGroup var dist: DistModelOptions

    func run() throws {
        try withWorld(timeout: dist.timeout) { comm in
            let (lm, model) = try loadDistributed(comm, threads: arguments.threads, arguments.load)
            try agree(comm) {
                if dist.debugFailRank == comm.rank { throw ValidationError("--debug-fail-rank: this rank refuses to run") }
                let n = lm.encode(try arguments.promptText(lm)).count
                if n < model.minimumTokens {
                    throw ValidationError("the prompt has \(n) tokens; across \(comm.size) ranks it needs at least \(model.minimumTokens)")
                }
            }
            killIfAsked(kill: dist.debugKillRank, hang: dist.debugHangRank, comm)
            let source = DistributedDecoding(lm: model, cacheType: arguments.cacheType)
            var args = arguments
            if args.threads == nil { args.threads = 1 }
            _ = try args.generate(lm, source: source, writes: comm.rank == 0, ranks: comm.size) { source.cacheBytes }
            try writeModelStats(model, cacheBytes: source.cacheBytes, to: dist.distStats, comm: comm)
        }
    }
}

struct DistPerplexity: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ppl",
        abstract: "attn lm ppl across ranks: each chunk's forward pass sequence-parallel (zigzag shards), each rank scoring the positions it holds. Rank 0 prints and writes the JSON.",
        discussion: "Same options and outputs as attn lm ppl. --ctx needs at least 2P tokens. --threads is per rank (default 1).")
    @OptionGroup var arguments: PerplexityArguments
    @OptionGroup var dist: DistModelOptions

    func run() throws {
        try withWorld(timeout: dist.timeout) { comm in
            let (lm, model) = try loadDistributed(comm, threads: arguments.threads, arguments.load)
            try agree(comm) {
                if dist.debugFailRank == comm.rank { throw ValidationError("--debug-fail-rank: this rank refuses to run") }
                if arguments.ctx < model.minimumTokens {
                    throw ValidationError("--ctx \(arguments.ctx) across \(comm.size) ranks: it needs at least \(model.minimumTokens)")
                }
            }
            killIfAsked(kill: dist.debugKillRank, hang: dist.debugHangRank, comm)
            try arguments.run(lm, chunkLoss: { chunk, rows in try model.chunkLoss(chunk, rows: rows) }, writes: comm.rank == 0)
            try writeModelStats(model, cacheBytes: 0, to: dist.distStats, comm: comm)
        }
    }
}
