// As the package README tells users: keep webqwen out of dependency pre-bundling (which would
// separate index.js from worker.js) and build the worker as an ES module.
export default {
  optimizeDeps: { exclude: ['webqwen'] },
  worker: { format: 'es' },
  build: { outDir: process.env.VITE_OUT_DIR || 'dist', emptyOutDir: true },
  logLevel: 'warn',
};
