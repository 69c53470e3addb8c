import ArgumentParser
struct DistBench: ParsableCommand { static let configuration = CommandConfiguration(commandName: "bench"); func run() throws {} }
