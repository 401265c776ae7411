import KilnTemplate

/// `kiln-bench validate [--resources N] [--rounds R]`: loads a generated minified deployment template (2,000 resources
/// make about 1 MB) and prints the time per load. The target is under one second in a release build.
struct ValidateBenchmark {
    var resources: Int
    var rounds: Int

    func run() {
        let text = SyntheticTemplates.minifiedDeployment(resources: resources)
        print("validate: \(resources) resources, \(text.utf8.count) bytes, \(rounds) rounds")
        let clock = ContinuousClock()
        for round in 1...max(1, rounds) {
            let start = clock.now
            let result = TemplateLoader.load(text: text, name: "synthetic")
            let elapsed = clock.now - start
            print("  round \(round): \(elapsed) (\(result.isValid ? "valid" : "\(result.errors.count) errors"), \(result.templates.count) image template)")
        }
    }
}
