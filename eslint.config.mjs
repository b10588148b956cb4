// ESLint for the dashboard: plain ES modules loaded by the browser as they are (no bundler, no build),
// so a mistake the linter misses is a mistake the owner meets. Run: npm run --silent lint:js
import js from '@eslint/js';
import globals from 'globals';

export default [
  // uPlot's committed minified build, copied from node_modules/ by dashboard/vendor_assets.py.
  { ignores: ['dashboard/vendor/'] },
  {
    files: ['dashboard/**/*.js'],
    languageOptions: {
      ecmaVersion: 'latest',
      sourceType: 'module',
      // The browser's globals and nothing else: no-undef (in recommended) then flags any other free name.
      globals: globals.browser,
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      ...js.configs.recommended.rules,
      // Browser globals that read like ordinary local names: a forgotten parameter or declaration called
      // `name`, `event`, `status` or `length` silently reads window's instead of failing no-undef.
      'no-restricted-globals': ['error', 'event', 'name', 'status', 'length', 'origin', 'parent', 'top',
        'self', 'opener', 'close', 'closed', 'open', 'stop', 'print', 'find', 'focus', 'blur', 'external'],
      // Arguments and caught errors count too; `_` marks one kept on purpose (a callback's fixed signature).
      'no-unused-vars': ['error', { args: 'after-used', argsIgnorePattern: '^_', caughtErrors: 'all' }],
      // `== null` is the one loose comparison kept: it means "null or undefined", as the API returns either.
      eqeqeq: ['error', 'always', { null: 'ignore' }],
      'no-var': 'error',
      'prefer-const': 'error',
      // no-implicit-globals is left out on purpose: it only applies to classic scripts. In a module a
      // top-level declaration stays in the module, and assigning an undeclared name throws (modules are
      // strict), which no-undef reports before it ships.
      // Bugs that parse and run: "${x}" in plain quotes, a .map() callback that forgets to return, a value
      // returned from a Promise executor (ignored), a loop whose condition never changes.
      'no-template-curly-in-string': 'error',
      'array-callback-return': 'error',
      'no-promise-executor-return': 'error',
      'no-unmodified-loop-condition': 'error',
      'no-self-compare': 'error',
      'no-constructor-return': 'error',
      'no-unreachable-loop': 'error',
      // A `let` or class read before its declaration throws at run time (temporal dead zone); hoisted
      // function declarations are fine and the modules use them that way.
      'no-use-before-define': ['error', { functions: false, classes: true, variables: true }],
      'no-eval': 'error',
      'no-implied-eval': 'error',
      'no-new-func': 'error',
      'no-throw-literal': 'error',
    },
  },
];
